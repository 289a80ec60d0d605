"""X-ARES over a folder of local tasks with xares's own runner (`python -m xares.run`), one task per
process, after the compatibility layer (entry.py).

Run directory: <runs>/xares/<name>/
  usad_run.json      manifest: model, checkpoint hash, encoder options, status of every task
  logs/<task>.log    xares's output for that task, appended on every attempt
  env/<task>/        xares's env dir: .audio_tar_ready, embeddings/UsadEncoder/ (encoded shards),
                     checkpoints/UsadEncoder/ (probe checkpoints, mlp_score.txt, knn_score.txt)
The shards stay in the corpora; the score files are xares's own and the leaderboard reads them.

Resuming: a task with its score files is done and skipped; otherwise xares itself skips the
encoding when its `.encoded_tar_ready` marker is there. A probe training that was cut short
leaves a checkpoint xares would load instead of training, so without a MLP score the task's
checkpoints folder is cleared first. xares skips, with only a warning, a clip it cannot decode,
so a task whose encoded shards hold fewer clips than the task has fails instead of being scored.
A failed task is recorded (one line naming its log), is encoded again on the next attempt, and
the next task still runs; the run then ends with an error naming the failed tasks.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from results.manifest import default_model_name, now, owner, read_manifest, refuse_other_run, resolved_checkpoint, write_manifest
from results.tasks import XARES
from results.xares_scores import Score, read_score, scores_dir
from usad_upstream.xares_encoder import CHECKPOINT_ENV, OPTIONS_ENV

from .tasks import ENCODED_MARKER, ENV_ROOT_ENV, READY_MARKER, TASK_ENV, encoded_pattern, read_task, task_dirs

ENCODER_MODULE = "usad_upstream/xares_encoder.py"  # what xares.run imports (module paths, as its CLI takes them)
TASK_MODULE = "downstream_recipes/xares/tasks.py"
ENCODER_CLASS = "UsadEncoder"  # xares names its output folders after the encoder's class


class XaresRunError(ValueError):
    """One or more tasks failed; their errors are in the manifest and their logs."""


@dataclass(frozen=True)
class XaresRun:
    checkpoint: str  # any form usad_upstream.release.resolve_checkpoint takes
    tasks_dir: Path  # a folder of local task folders (corpora/xares) or one task folder
    runs_dir: Path = Path("runs")
    name: "str | None" = None
    tasks: tuple[str, ...] = ()  # task folder names; empty: all
    options: dict = field(default_factory=dict)  # hear_api.load_model options
    trust_remote_code: bool = False
    verbose: bool = False  # xares's output on the terminal too, not only in the logs

    @property
    def model_name(self) -> str:
        """As `usad superb run -u usad -k CKPT` names it: usad-<checkpoint stem>."""
        return self.name or default_model_name("usad", self.checkpoint)

    @property
    def run_dir(self) -> Path:
        return (Path(self.runs_dir) / "xares" / self.model_name).resolve()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_logged(cmd: Sequence[str], log: Path, env: dict[str, str], cwd: Path, echo: bool) -> int:
    """Run cmd with its output appended to `log` (and our stdout when `echo`); SIGTERM or Ctrl-C
    kills the child too, so no xares process outlives the run."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
    try:
        with log.open("ab") as sink:
            sink.write(f"\n=== {now()} $ {' '.join(cmd)}\n".encode())
            sink.flush()
            proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE if echo else sink, stderr=subprocess.STDOUT,
                                    env=env, cwd=cwd)
            try:
                while echo and (chunk := proc.stdout.read1(1 << 14)):  # type: ignore[union-attr]
                    sink.write(chunk)
                    sink.flush()
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                return proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR = re.compile(r"(Error|Exception|Invalid encoder|Must fix)")


def last_error(log: Path) -> str:
    """The line of the last attempt in `log` that says what went wrong (xares logs stage errors
    and carries on; Python ends with the exception line), or "" if none does."""
    text = _ANSI.sub("", log.read_text(errors="replace")) if log.is_file() else ""
    attempt = text.rsplit("\n=== ", 1)[-1]
    lines = [line.strip() for line in attempt.replace("\r", "\n").splitlines() if _ERROR.search(line)]
    return lines[-1][:300] if lines else ""


def _encoder_options(run: XaresRun) -> dict:
    return dict(run.options, trust_remote_code=True) if run.trust_remote_code else dict(run.options)


def check_encoder(checkpoint: str, options: dict) -> None:
    """Build the encoder once here and put it through X-ARES's own checker, so a bad checkpoint or
    option fails once, in one line, instead of in every task's process."""
    from xares.audio_encoder_checker import check_audio_encoder

    from usad_upstream.xares_encoder import UsadEncoder

    encoder = UsadEncoder(checkpoint, **options)
    if not check_audio_encoder(encoder):
        raise ValueError(f"X-ARES's check_audio_encoder rejected UsadEncoder({checkpoint!r}); its reason is logged above")


def _open_manifest(run: XaresRun, checkpoint: str, ckpt_hash: str, options: dict) -> dict:
    manifest = read_manifest(run.run_dir)
    if manifest is not None:  # one run per directory, as for SUPERB and HEAR runs
        refuse_other_run(run.run_dir, manifest, {"checkpoint_hash": ckpt_hash, "options": options}, checkpoint)
    return manifest or {
        "benchmark": XARES, "model": run.model_name, "checkpoint": checkpoint, "checkpoint_hash": ckpt_hash,
        "options": options, "tasks_dir": str(Path(run.tasks_dir).resolve()), "encoder": ENCODER_MODULE,
        "encoder_class": ENCODER_CLASS, "env_dir": "env", "created": now(), "tasks": {},
    }


def _task_scores(run_dir: Path, name: str) -> dict[str, "Score | None"]:
    where = scores_dir(run_dir / "env", name, ENCODER_CLASS)
    return {"mlp": read_score(where, "mlp"), "knn": read_score(where, "knn")}


def encoded_counts(run_dir: Path, name: str, spec: dict) -> dict[str, int]:
    """Clips per split in the shards xares encoded. xares skips, with a warning, every clip it
    cannot decode, and still marks the encoding done: a count below the task's means lost clips."""
    where = run_dir / "env" / name / "embeddings" / ENCODER_CLASS
    counts = {}
    for split in spec["splits"]:
        counts[split] = 0
        for shard in where.glob(encoded_pattern(split, spec["k_fold"])):
            if shard.stat().st_size:  # xares leaves an empty file for a split it encoded nothing of
                with tarfile.open(shard) as tar:
                    counts[split] += sum(1 for member in tar.getnames() if member.endswith(".npy"))
    return counts


def _finished(info: dict, scores: dict[str, "Score | None"]) -> bool:
    return scores["mlp"] is not None and (not info["knn"] or scores["knn"] is not None)


def _run_task(task_dir: Path, spec: dict, run_dir: Path, env: dict[str, str], echo: bool, info: dict,
              save: Callable[[], None]) -> None:
    """One task through xares's runner in its own process; records the outcome in `info`."""
    name = task_dir.name
    if _task_scores(run_dir, name)["mlp"] is None:  # a probe training cut short: train it again
        shutil.rmtree(scores_dir(run_dir / "env", name, ENCODER_CLASS), ignore_errors=True)
    (run_dir / "env" / name).mkdir(parents=True, exist_ok=True)
    (run_dir / "env" / name / READY_MARKER).touch()  # local shards: nothing to download
    log = run_dir / "logs" / f"{name}.log"
    info.update(status="running", started=now(), error="", log=str(log))
    save()
    print(f"X-ARES {name}: encoding and probing (log: {log})", flush=True)
    start = time.time()
    cmd = [sys.executable, "-m", "downstream_recipes.xares.entry", ENCODER_MODULE, TASK_MODULE, "--max-jobs", "0"]
    try:
        rc = _run_logged(cmd, log, dict(env, **{TASK_ENV: str(task_dir.resolve())}), run_dir, echo)
    except KeyboardInterrupt:
        info["status"] = "interrupted"
        save()
        raise
    scores = _task_scores(run_dir, name)
    info.update(finished=now(), seconds=round(time.time() - start, 1))
    scored = rc == 0 and _finished(info, scores)
    encoded, expected = encoded_counts(run_dir, name, spec) if scored else {}, spec["counts"]
    if scored and encoded == expected:
        info["status"] = "done"
        print(f"X-ARES {name}: done in {info['seconds']:.0f} s", flush=True)
        save()
        return
    if scored:
        lost = ", ".join(f"{split} {encoded[split]} of {n}" for split, n in expected.items() if encoded[split] != n)
        why = f"xares encoded only {lost} clips (the others failed to decode: see the warnings in the log)"
        shutil.rmtree(scores_dir(run_dir / "env", name, ENCODER_CLASS))  # scores on lost clips are no scores
    else:
        why = last_error(log) or f"xares exit status {rc}, no {'kNN' if scores['mlp'] else 'MLP'} score written"
    # xares marks an encoding done even when it lost every clip: encode again on the next attempt
    (run_dir / "env" / name / "embeddings" / ENCODER_CLASS / ENCODED_MARKER).unlink(missing_ok=True)
    info.update(status="failed", error=why)
    print(f"X-ARES {name} failed: {why} (log: {log})", flush=True)
    save()


def run_xares(run: XaresRun) -> Path:
    """Every task through xares's runner; returns the run directory."""
    checkpoint, ckpt_hash = resolved_checkpoint(run.checkpoint)
    options = _encoder_options(run)
    dirs = task_dirs(run.tasks_dir, run.tasks)
    run_dir = run.run_dir
    manifest = _open_manifest(run, checkpoint, ckpt_hash, options)
    specs = {d.name: read_task(d) for d in dirs}
    for d in dirs:
        spec = specs[d.name]
        info = manifest["tasks"].setdefault(d.name, {})
        info.update(formal_name=spec["formal_name"], metric=spec["metric"], knn=spec["task_type"] != "frame",
                    task_dir=str(d.resolve()))
        info["status"] = "done" if _finished(info, _task_scores(run_dir, d.name)) else "pending"
    pending = [d for d in dirs if manifest["tasks"][d.name]["status"] == "pending"]
    if pending:
        check_encoder(checkpoint, options)

    def save() -> None:
        states = [t["status"] for t in manifest["tasks"].values()]
        overall = "failed" if "failed" in states else ("done" if all(s == "done" for s in states) else "running")
        manifest.update(stages={"run": {"status": overall}}, owner=owner())
        write_manifest(run_dir, manifest)

    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{CHECKPOINT_ENV: checkpoint, OPTIONS_ENV: json.dumps(options), ENV_ROOT_ENV: str(run_dir / "env")})
    for d in pending:
        _run_task(d, specs[d.name], run_dir, env, run.verbose, manifest["tasks"][d.name], save)
    save()
    print(summary(run_dir, manifest, [d.name for d in dirs]))
    failed = [d.name for d in dirs if manifest["tasks"][d.name]["status"] == "failed"]
    if failed:
        raise XaresRunError(f"X-ARES tasks failed: {', '.join(failed)} (logs in {run_dir / 'logs'})")
    return run_dir


def summary(run_dir: Path, manifest: dict, names: list[str]) -> str:
    """The per-task score table, from xares's own score files, with xares's weighted averages."""
    from xares.metrics import weighted_average

    rows = [("task", "metric", "MLP", "kNN", "weight", "status")]
    scored: dict[str, list[tuple[float, int]]] = {}
    for name in names:
        info = manifest["tasks"][name]
        scores = _task_scores(run_dir, name)
        mlp, knn = scores["mlp"], scores["knn"]
        cells = [f"{100 * s.value:.2f}" if s else "—" for s in (mlp, knn)]
        rows.append((name, info["metric"], cells[0], cells[1] if info["knn"] else "n/a",
                     str(mlp.weight) if mlp else "—", info["status"]))
        if mlp:
            scored[name] = [tuple(mlp), tuple(knn) if knn else (0.0, 0)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"X-ARES scores of {manifest['model']} (x100; xares's score files under {run_dir / 'env'}):"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if scored:
        mlp_avg, knn_avg = weighted_average(scored)
        knn_text = f", kNN {100 * knn_avg:.2f} (tasks with a kNN score)" if any(s[1][1] for s in scored.values()) else ""
        lines.append(f"  weighted average by test size (xares.metrics.weighted_average): MLP {100 * mlp_avg:.2f}{knn_text}")
    return "\n".join(lines)
