"""HEAR over a tasks directory with heareval's own runners: embeddings, then predictions, per task.

Run directory: <runs>/hear/<name>/
  usad_run.json                         manifest: model, checkpoint hash, seeds, status of every task
  embeddings/<module>[-options]/<task>/ heareval's embeddings + test.predicted-scores.json
  seed-<N>/<task>/                      with seeds: links to that task's embeddings, and the
                                        predictions of heareval's probes seeded with N
heareval itself skips finished work (`.done.embeddings`, `prediction-done.json`), so a rerun
resumes where it stopped. A task that fails is recorded and the next task still runs; the run
then ends with an error naming the failed tasks. Any HEAR 2021 module works (hear_api with a
USAD checkpoint, hearbaseline's wrappers, ...). The module and its --model are loaded once before
anything starts or is written, so a wrong file fails in one line, not once per task. heareval's
and Lightning's output goes to usad_hear.log in the run directory; `verbose` also streams it.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from results.manifest import (checkpoint_hash, default_model_name, now, owner, read_manifest, refuse_other_run, resolved_checkpoint,
                              write_manifest)
from results.tasks import HEAR

from ..taskdirs import select_task_dirs

LOG = "usad_hear.log"

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
    verbose: bool = False  # stream heareval's output too (it always goes to usad_hear.log)
    # Seeds of heareval's probes, which it otherwise fixes at 42 (seed_everything(42): the probe's
    # initial weights, its dropout and which points of the grid are tried). Empty: heareval's own.
    seeds: tuple[int, ...] = ()

    @property
    def model_name(self) -> str:
        """The name SUPERB gives the same checkpoint (`usad-tiny` for hear_api + tiny.safetensors),
        plus the model options, which make it another model."""
        return self.name or default_model_name(self.module, self.model) + self._options_slug()

    @property
    def run_dir(self) -> Path:
        return (Path(self.runs_dir) / "hear" / self.model_name).resolve()

    @property
    def embeddings_subdir(self) -> str:
        """Where heareval's embeddings runner puts this module's outputs (its naming rule)."""
        return f"embeddings/{self.module}{self._options_slug()}"

    def _options_slug(self) -> str:
        from slugify import slugify

        return "".join(f"-{slugify(str(k))}={slugify(str(v))}" for k, v in self.model_options.items())

    def predictions_dir(self, task: str, seed: "int | None") -> Path:
        """Where heareval's predictions runner writes its outputs for `task` (and `seed`)."""
        if seed is None:
            return self.run_dir / self.embeddings_subdir / task
        return self.run_dir / f"seed-{seed}" / task



def check_module(module: str, model: "str | None", options: dict) -> None:
    """Import the HEAR module and load its model once, as heareval will, so a wrong --module or
    --model (an audio file, a run directory) fails in one line before any task starts."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"--module {module}: cannot import it ({exc})") from None
    missing = [f for f in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings") if not hasattr(mod, f)]
    if missing:
        raise ValueError(f"--module {module}: not a HEAR 2021 module (no {', '.join(missing)})")
    try:
        mod.load_model(model, **options) if model is not None else mod.load_model(**options)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - another module's own error type: one line all the same
        raise ValueError(f"--module {module}: load_model({model or ''}) failed: {type(exc).__name__}: {exc}") from None


@contextlib.contextmanager
def output_to(log: Path, echo: bool) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so Lightning's, tqdm's and C
    code's output too) appended to `log`, and also to the terminal when `echo`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    read_end, write_end = os.pipe()
    with log.open("ab") as sink:
        def pump() -> None:
            while chunk := os.read(read_end, 1 << 16):
                sink.write(chunk)
                sink.flush()
                if echo:
                    os.write(saved[0], chunk)

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        streams = sys.stdout, sys.stderr  # replaced ones (pytest's, a notebook's) would bypass the descriptors
        sys.stdout, sys.stderr = (open(fd, "w", buffering=1, closefd=False, errors="replace") for fd in (1, 2))
        try:
            yield
        finally:
            # Flushed, not closed: a handler made meanwhile (Lightning's logging) may keep one and
            # write later, which then reaches the restored descriptor.
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            thread.join(timeout=10)  # EOF once no descriptor holds the pipe; a lingering worker must not hang us
            for fd in (read_end, *saved):
                os.close(fd)

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


@contextlib.contextmanager
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
    return select_task_dirs(tasks_dir, "task_metadata.json", only, "--tasks-dir", "HEAR task")


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


def _model(run: HearRun) -> tuple["str | None", str]:
    """(--model for heareval, its content hash): hear_api takes any form the library resolves (a
    file, a release snapshot, a hub id); other modules a file."""
    if run.model is None:
        return None, ""
    if run.module == "hear_api":
        from usad_upstream.release import TRUST_ENV

        if run.trust_remote_code:
            os.environ[TRUST_ENV] = "1"  # heareval's runner calls hear_api.load_model in this process
        return resolved_checkpoint(run.model)
    if not Path(run.model).is_file():
        raise ValueError(f"--model {run.model}: file not found")
    return str(Path(run.model).resolve()), checkpoint_hash(run.model)


def run_hear(run: HearRun) -> Path:
    """Embeddings + predictions for every task; returns the run directory."""
    from usad_upstream.hear import run_embeddings_runner, run_predictions_runner

    if run.grid not in GRIDS:
        raise ValueError(f"--grid must be one of {', '.join(GRIDS)}, got {run.grid!r}")
    if run.grid_points < 1:
        raise ValueError(f"--grid-points must be >= 1, got {run.grid_points}")
    model, ckpt_hash = _model(run)
    tasks = task_dirs(run.tasks_dir, run.tasks)
    check_module(run.module, model, run.model_options)
    run_dir = run.run_dir
    manifest = read_manifest(run_dir)
    if manifest is not None:
        manifest.setdefault("model_options", {})  # runs recorded before options were
        refuse_other_run(run_dir, manifest, {"module": run.module, "checkpoint_hash": ckpt_hash,
                                             "model_options": run.model_options}, model)
    else:
        manifest = {"benchmark": HEAR, "model": run.model_name, "module": run.module,
                    "checkpoint": model,
                    "checkpoint_hash": ckpt_hash, "model_options": run.model_options,
                    "tasks_dir": str(Path(run.tasks_dir).resolve()),
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
    save()
    log = run_dir / LOG
    print(f"HEAR {run.model_name}: {len(tasks)} task(s); heareval's output: {log}", flush=True)
    for number, task_dir in enumerate(tasks, 1):
        info = manifest["tasks"][task_dir.name]
        todo = [seed for seed in (run.seeds or (None,))
                if not (run.predictions_dir(task_dir.name, seed) / "test.predicted-scores.json").is_file()]
        if info["status"] == "done" and not todo:
            continue
        info.update(status="running", started=now(), error="")
        save()
        began = time.time()
        print(f"  [{number}/{len(tasks)}] {task_dir.name}: embeddings + predictions ...", end="\n" if run.verbose else "",
              flush=True)
        try:
            with output_to(log, run.verbose):
                _run_task(run, task_dir, model, todo, embed_root, out_root, run_embeddings_runner, run_predictions_runner)
            info.update(status="done", finished=now())
            print(f" done in {time.time() - began:.0f} s", flush=True)
        except KeyboardInterrupt:
            info.update(status="interrupted")
            save()
            raise
        except Exception as exc:  # noqa: BLE001 - record it, go on with the next task
            info.update(status="failed", finished=now(), error=f"{type(exc).__name__}: {exc}")
            print(f" FAILED: {info['error']} (see {log})", flush=True)
        save()
    failed = [name for name, info in manifest["tasks"].items() if info["status"] == "failed"]
    if failed:
        raise HearRunError(f"HEAR tasks failed: {', '.join(failed)} (details in {log} and {run_dir / 'usad_run.json'}); "
                           f"fix it and run the same command again (finished tasks are kept)")
    return run_dir


Runner = Callable[[list[str]], int]


def _run_task(run: HearRun, task_dir: Path, model: "str | None", seeds: list, embed_root: Path, out_root: Path,
              embed: Runner, predict: Runner) -> None:
    """heareval's embeddings runner, then its predictions runner for each seed still to do, on one task."""
    print(f"\n=== {now()} task {task_dir.name}", flush=True)
    embed_args = [run.module, "--tasks-dir", str(Path(run.tasks_dir).resolve()), "--task", task_dir.name,
                  "--embeddings-dir", str(embed_root), "--model-options", json.dumps(run.model_options)]
    if model is not None:
        embed_args += ["--model", model]
    rc = embed(embed_args)
    if rc != 0:
        raise RuntimeError(f"heareval embeddings runner exit status {rc}")
    for seed in seeds:
        target = run.predictions_dir(task_dir.name, seed)
        if seed is not None:
            link_embeddings(out_root / task_dir.name, target)
        with heareval_seed(seed):
            rc = predict([str(target), "--grid", run.grid, "--grid-points", str(run.grid_points)])
        if rc != 0:
            raise RuntimeError(f"heareval predictions runner exit status {rc}{f' (seed {seed})' if seed is not None else ''}")
        if not (target / "test.predicted-scores.json").is_file():
            raise RuntimeError(f"the predictions runner wrote no test.predicted-scores.json in {target}")
