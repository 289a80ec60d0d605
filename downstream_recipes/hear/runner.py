"""HEAR over a tasks directory with heareval's own runners: embeddings, then predictions, per task.

Run directory: <runs>/hear/<name>/
  usad_run.json                         manifest: model, checkpoint hash, status of every task
  embeddings/<module>[-options]/<task>/ heareval's embeddings + test.predicted-scores.json
heareval itself skips finished work (`.done.embeddings`, `prediction-done.json`), so a rerun
resumes where it stopped. A task that fails is recorded and the next task still runs; the run
then ends with an error naming the failed tasks. Any HEAR 2021 module works (hear_api with a
USAD checkpoint, hearbaseline's wrappers, ...).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from results.manifest import file_hash, now, owner, read_manifest, write_manifest
from results.tasks import HEAR

GRIDS = ("default", "fast", "faster")


class HearRunError(ValueError):
    """One or more tasks failed; their errors are in the manifest."""


@dataclass(frozen=True)
class HearRun:
    module: str
    tasks_dir: Path
    model: "Path | None" = None  # weights file passed to the module's load_model
    runs_dir: Path = Path("runs")
    name: "str | None" = None
    grid: str = "default"
    grid_points: int = 8  # heareval's --grid-points: how many points of the grid are tried
    tasks: tuple[str, ...] = ()  # task directory names; empty: every task in tasks_dir
    model_options: dict = field(default_factory=dict)
    trust_remote_code: bool = False  # hear_api on a release snapshot: let its own code run

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.module}-{Path(self.model).stem}" if self.model else self.module

    @property
    def run_dir(self) -> Path:
        return (Path(self.runs_dir) / "hear" / self.model_name).resolve()

    @property
    def embeddings_subdir(self) -> str:
        """Where heareval's embeddings runner puts this module's outputs (its naming rule)."""
        from slugify import slugify

        options = "".join(f"-{slugify(str(k))}={slugify(str(v))}" for k, v in self.model_options.items())
        return f"embeddings/{self.module}{options}"


def task_dirs(tasks_dir: Path, only: tuple[str, ...] = ()) -> list[Path]:
    """HEAR task directories (those with a task_metadata.json), optionally a named subset."""
    tasks_dir = Path(tasks_dir)
    if not tasks_dir.is_dir():
        raise ValueError(f"--tasks-dir {tasks_dir}: not a directory")
    found = sorted(p for p in tasks_dir.iterdir() if (p / "task_metadata.json").is_file())
    if only:
        names = {p.name for p in found}
        unknown = [t for t in only if t not in names]
        if unknown:
            raise ValueError(f"tasks {unknown} not in {tasks_dir} (has: {', '.join(sorted(names)) or 'none'})")
        found = [p for p in found if p.name in only]
    if not found:
        raise ValueError(f"{tasks_dir}: no HEAR task directories (subfolders with task_metadata.json)")
    return found


def _task_info(task_dir: Path) -> dict:
    try:
        meta = json.loads((task_dir / "task_metadata.json").read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{task_dir / 'task_metadata.json'}: not valid JSON ({exc})") from None
    evaluation = meta.get("evaluation") or [""]
    return {"task_name": str(meta.get("task_name", task_dir.name)), "metric": str(evaluation[0]), "status": "pending"}


def _summary(tasks: dict) -> dict:
    """Aggregate per-task status into the embed/predict stages the leaderboard reads."""
    states = [t["status"] for t in tasks.values()]
    if any(s == "failed" for s in states):
        overall = "failed"
    elif all(s == "done" for s in states):
        overall = "done"
    else:
        overall = "running"
    return {"run": {"status": overall}}


def run_hear(run: HearRun) -> Path:
    """Embeddings + predictions for every task; returns the run directory."""
    from usad_upstream.hear import run_embeddings_runner, run_predictions_runner

    if run.grid not in GRIDS:
        raise ValueError(f"--grid must be one of {', '.join(GRIDS)}, got {run.grid!r}")
    if run.grid_points < 1:
        raise ValueError(f"--grid-points must be >= 1, got {run.grid_points}")
    model, ckpt_hash = None, ""
    if run.model is not None and run.module == "hear_api":  # any form the library resolves (file, snapshot, hub id)
        from usad_upstream.release import TRUST_ENV, resolve_checkpoint

        resolved = resolve_checkpoint(run.model)
        model, ckpt_hash = str(resolved.path.resolve()), "+".join(file_hash(p) for p in resolved.hash_files)
        if run.trust_remote_code:
            os.environ[TRUST_ENV] = "1"  # heareval's runner calls hear_api.load_model in this process
    elif run.model is not None:
        if not Path(run.model).is_file():
            raise ValueError(f"--model {run.model}: file not found")
        model, ckpt_hash = str(Path(run.model).resolve()), file_hash(run.model)
    tasks = task_dirs(run.tasks_dir, run.tasks)
    run_dir = run.run_dir
    manifest = read_manifest(run_dir)
    if manifest is not None and (manifest.get("module"), manifest.get("checkpoint_hash")) != (run.module, ckpt_hash):
        raise ValueError(f"{run_dir} holds a run of {manifest.get('module')!r} (checkpoint "
                         f"{manifest.get('checkpoint_hash')!r}); pick another --name")
    if manifest is None:
        manifest = {"benchmark": HEAR, "model": run.model_name, "module": run.module,
                    "checkpoint": model,
                    "checkpoint_hash": ckpt_hash, "tasks_dir": str(Path(run.tasks_dir).resolve()),
                    "embeddings_dir": run.embeddings_subdir, "grid": run.grid, "grid_points": run.grid_points, "created": now(), "tasks": {}}
    for task_dir in tasks:
        manifest["tasks"].setdefault(task_dir.name, _task_info(task_dir))

    def save() -> None:
        manifest["stages"] = _summary(manifest["tasks"])
        manifest["owner"] = owner()
        write_manifest(run_dir, manifest)

    embed_root = run_dir / "embeddings"
    out_root = run_dir / run.embeddings_subdir
    for task_dir in tasks:
        info = manifest["tasks"][task_dir.name]
        if info["status"] == "done" and (out_root / task_dir.name / "test.predicted-scores.json").is_file():
            continue
        info.update(status="running", started=now(), error="")
        save()
        try:
            embed_args = [run.module, "--tasks-dir", str(Path(run.tasks_dir).resolve()), "--task", task_dir.name,
                          "--embeddings-dir", str(embed_root), "--model-options", json.dumps(run.model_options)]
            if model is not None:
                embed_args += ["--model", model]
            rc = run_embeddings_runner(embed_args)
            if rc != 0:
                raise RuntimeError(f"heareval embeddings runner exit status {rc}")
            rc = run_predictions_runner([str(out_root / task_dir.name), "--grid", run.grid,
                                         "--grid-points", str(run.grid_points)])
            if rc != 0:
                raise RuntimeError(f"heareval predictions runner exit status {rc}")
            if not (out_root / task_dir.name / "test.predicted-scores.json").is_file():
                raise RuntimeError("the predictions runner wrote no test.predicted-scores.json")
            info.update(status="done", finished=now())
        except KeyboardInterrupt:
            info.update(status="interrupted")
            save()
            raise
        except Exception as exc:  # noqa: BLE001 - record it, go on with the next task
            info.update(status="failed", finished=now(), error=f"{type(exc).__name__}: {exc}")
            print(f"usad hear run: task {task_dir.name} failed: {info['error']}", flush=True)
        save()
    failed = [name for name, info in manifest["tasks"].items() if info["status"] == "failed"]
    if failed:
        raise HearRunError(f"HEAR tasks failed: {', '.join(failed)} (details in {run_dir / 'usad_run.json'})")
    return run_dir
