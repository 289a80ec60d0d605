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

MANIFEST = "usad_run.json"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def file_hash(path: "str | Path", length: int = 12) -> str:
    """Short sha256 of a checkpoint file: identifies the exact weights behind a number."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


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
