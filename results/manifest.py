"""The run manifest `usad_run.json`: who ran what, with which checkpoint, how far it got.

The recipes write it next to the tool outputs and update it after every stage, so the
leaderboard can name the model and checkpoint of a run and tell a finished run from one that is
still going or that crashed.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
from pathlib import Path

from usad_upstream.checkpoint import content_hash

MANIFEST = "usad_run.json"

# One model, one name across benchmarks: a HEAR module over USAD checkpoints is named like the
# s3prl upstream that reads the same files, so `-u usad -k tiny.safetensors` (SUPERB) and
# `--module hear_api --model tiny.safetensors` (HEAR) are both `usad-tiny`.
MODEL_FAMILY = {"usad_local": "usad", "hear_api": "usad", "hear_api.teacher": "usad_teacher"}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def checkpoint_hash(path: "str | Path | None") -> str:
    """What identifies the weights behind a number: equal models give equal hashes ("" for none).
    A teacher spec file (kinds and paths of teachers) is hashed with the weights it names, each
    path replaced by its file's hash: another checkpoint behind the same spec gets another hash,
    the same checkpoints elsewhere on disk the same one."""
    if not path:
        return ""
    if Path(path).suffix.lower() in SPEC_SUFFIXES:
        from usad_upstream.teachers.stack import read_stack_spec

        try:
            spec = read_stack_spec(path)
        except ValueError:
            return content_hash(path)  # not a teacher spec: its bytes
        for teacher in spec["teachers"]:
            for key in ("path", "ckpt"):
                if teacher.get(key) and Path(teacher[key]).is_file():
                    teacher[key] = content_hash(teacher[key])
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return content_hash(path)


def resolved_checkpoint(spec: "str | Path") -> tuple[str, str]:
    """(path for the tool, content hash) of any checkpoint form the library resolves: a student
    file, a release snapshot or a hub id (hashed over config.json + weights)."""
    from usad_upstream.release import resolve_checkpoint

    resolved = resolve_checkpoint(spec)
    return str(resolved.path.resolve()), "+".join(checkpoint_hash(p) for p in resolved.hash_files)


def default_model_name(tool_name: str, checkpoint: "str | Path | None") -> str:
    """`<family>-<checkpoint stem>` (or the family alone without a checkpoint), the same in every benchmark."""
    family = MODEL_FAMILY.get(tool_name, tool_name)
    return f"{family}-{Path(checkpoint).stem}" if checkpoint else family


def refuse_other_run(run_dir: Path, manifest: dict, wanted: dict[str, object], checkpoint: "str | Path | None") -> None:
    """A run directory holds one run: name every field in which `wanted` differs from what the
    directory holds (checkpoints by content, wherever the file now lies), and the two ways out."""
    differs = []
    for key, value in wanted.items():
        if manifest.get(key) == value:
            continue
        if key == "checkpoint_hash":
            now_path = Path(checkpoint).resolve() if checkpoint else None
            differs.append(f"the weights differ: checkpoint {manifest.get('checkpoint')} (hash {manifest.get(key)!r}) "
                           f"there, {now_path} (hash {value!r}) now")
        else:
            differs.append(f"{key} {manifest.get(key)!r} there, {value!r} now")
    if differs:
        raise ValueError(f"{run_dir} holds another run ({'; '.join(differs)}): pass --name NEW to keep both, "
                         f"or delete {run_dir} to replace it")


def read_manifest(run_dir: "str | Path") -> "dict | None":
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def write_manifest(run_dir: "str | Path", data: dict) -> None:
    """Atomic, so a crash mid-write never leaves a manifest that cannot be read."""
    from usad_upstream.checkpoint import atomic_write

    data = dict(data, updated=now())
    text = json.dumps(data, indent=2, sort_keys=True)
    atomic_write(Path(run_dir) / MANIFEST, lambda tmp: Path(tmp).write_text(text))


def owner() -> dict:
    """Who is running the stages now; lets a reader tell a live run from a killed one."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_status(manifest: "dict | None") -> str:
    """"done", "failed", "running", "interrupted" or "unknown" (no manifest: run by hand).

    "interrupted": stages are unfinished and the process that ran them (on this host) is gone.
    """
    if manifest is None:
        return "unknown"
    stages = manifest.get("stages") or {}
    if any(s.get("status") == "failed" for s in stages.values()):
        return "failed"
    if stages and all(s.get("status") == "done" for s in stages.values()):
        return "done"
    who = manifest.get("owner") or {}
    if who.get("host") == socket.gethostname() and isinstance(who.get("pid"), int) and not _alive(who["pid"]):
        return "interrupted"
    return "running"
