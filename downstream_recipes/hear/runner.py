"""HEAR over a tasks directory with heareval's own runners: embeddings, then predictions, per task.

Run directory: <runs>/hear/<name>/
  usad_run.json                         manifest: model, checkpoint hash, seeds, status of every task
  embeddings/<module>[-options]/<task>/ heareval's embeddings + test.predicted-scores.json
  seed-<N>/<task>/                      with seeds: links to that task's embeddings, and the
                                        predictions of heareval's probes seeded with N
heareval itself skips finished work (`.done.embeddings`, `prediction-done.json`), so a rerun
resumes where it stopped. A task that fails is recorded and the next task still runs; the run
then ends with an error naming the failed tasks. Any HEAR 2021 module works (hear_api with a
USAD checkpoint, hearbaseline's wrappers, ...).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

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
    # Seeds of heareval's probes, which it otherwise fixes at 42 (seed_everything(42): the probe's
    # initial weights, its dropout and which points of the grid are tried). Empty: heareval's own.
    seeds: tuple[int, ...] = ()

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

    def predictions_dir(self, task: str, seed: "int | None") -> Path:
        """Where heareval's predictions runner writes its outputs for `task` (and `seed`)."""
        if seed is None:
            return self.run_dir / self.embeddings_subdir / task
        return self.run_dir / f"seed-{seed}" / task


# What heareval's predictions runner writes into a task directory; the rest is embeddings.
PREDICTION_OUTPUTS = ("prediction-done.json", "test.predicted-scores.json", "prediction.log")


def link_embeddings(embedded: Path, target: Path) -> None:
    """A task directory for one seed's predictions: links to the embedding runner's files."""
    target.mkdir(parents=True, exist_ok=True)
    for path in embedded.iterdir():
        link = target / path.name
        if path.is_file() and path.name not in PREDICTION_OUTPUTS and not path.name.endswith(".predictions.pkl") \
                and not link.exists():
            os.symlink(os.path.relpath(path, target), link)


@contextmanager
def heareval_seed(seed: "int | None") -> Iterator[None]:
    """heareval's predictions runner with `seed` where it calls seed_everything(42)."""
    if seed is None:
        yield
        return
    from usad_upstream.compat import patch_heareval

    patch_heareval()  # before heareval's modules are imported
    from heareval.predictions import task_predictions

    fixed = task_predictions.seed_everything
    task_predictions.seed_everything = lambda _seed, workers=False: fixed(seed, workers=workers)
    try:
        yield
    finally:
        task_predictions.seed_everything = fixed


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
    if run.model is not None and not Path(run.model).is_file():
        raise ValueError(f"--model {run.model}: file not found")
    tasks = task_dirs(run.tasks_dir, run.tasks)
    run_dir = run.run_dir
    ckpt_hash = file_hash(run.model) if run.model else ""
    manifest = read_manifest(run_dir)
    if manifest is not None and (manifest.get("module"), manifest.get("checkpoint_hash")) != (run.module, ckpt_hash):
        raise ValueError(f"{run_dir} holds a run of {manifest.get('module')!r} (checkpoint "
                         f"{manifest.get('checkpoint_hash')!r}); pick another --name")
    if manifest is None:
        manifest = {"benchmark": HEAR, "model": run.model_name, "module": run.module,
                    "checkpoint": str(Path(run.model).resolve()) if run.model else None,
                    "checkpoint_hash": ckpt_hash, "tasks_dir": str(Path(run.tasks_dir).resolve()),
                    "embeddings_dir": run.embeddings_subdir, "grid": run.grid, "grid_points": run.grid_points, "created": now(), "tasks": {}}
    manifest["seeds"] = sorted(set(manifest.get("seeds") or ()) | set(run.seeds))
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
        todo = [seed for seed in (run.seeds or (None,))
                if not (run.predictions_dir(task_dir.name, seed) / "test.predicted-scores.json").is_file()]
        if info["status"] == "done" and not todo:
            continue
        info.update(status="running", started=now(), error="")
        save()
        try:
            embed_args = [run.module, "--tasks-dir", str(Path(run.tasks_dir).resolve()), "--task", task_dir.name,
                          "--embeddings-dir", str(embed_root), "--model-options", json.dumps(run.model_options)]
            if run.model is not None:
                embed_args += ["--model", str(Path(run.model).resolve())]
            rc = run_embeddings_runner(embed_args)
            if rc != 0:
                raise RuntimeError(f"heareval embeddings runner exit status {rc}")
            for seed in todo:
                target = run.predictions_dir(task_dir.name, seed)
                if seed is not None:
                    link_embeddings(out_root / task_dir.name, target)
                with heareval_seed(seed):
                    rc = run_predictions_runner([str(target), "--grid", run.grid, "--grid-points", str(run.grid_points)])
                if rc != 0:
                    raise RuntimeError(f"heareval predictions runner exit status {rc}{f' (seed {seed})' if seed is not None else ''}")
                if not (target / "test.predicted-scores.json").is_file():
                    raise RuntimeError(f"the predictions runner wrote no test.predicted-scores.json in {target}")
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
