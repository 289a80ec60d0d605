"""One SUPERB task, end to end, through s3prl's own run_downstream: train -> select -> test.

Run directory: <runs>/superb/<TASK>/<name>/ (with a seed: <name>/seed-<N>/) is s3prl's experiment
directory, plus
  usad_run.json   manifest (model, checkpoint hash, stage status) read by `usad leaderboard`
  usad_train.log  everything run_downstream printed while training
  usad_test.log   the evaluation of the selected checkpoint(s) on the test split
  best-dev/       with --evaluate-dev: the selected checkpoint's predictions on the dev split (the
                  dev files s3prl writes while training are those of its last evaluation)
Stages that are done are skipped on rerun; an interrupted training resumes from s3prl's newest
states-*.ckpt (`-e`). Any upstream s3prl knows works (usad -k CKPT, fbank, wavlm_local -k ...).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from results import s3prl_logs
from results.manifest import file_hash, now, owner, read_manifest, write_manifest
from results.tasks import SUPERB, SUPERB_TASKS

from .recipes import Recipe, format_overrides, get_recipe, step_overrides, unknown_config_keys
from .s3prl_entry import CACHE_ENV

STAGES = ("train", "select", "test")
BEST_DEV_DIR = "best-dev"


class RecipeError(ValueError):
    """A stage failed; the message says which and where its log is."""


@dataclass(frozen=True)
class SuperbRun:
    task: str
    upstream: str
    data: Path
    runs_dir: Path = Path("runs")
    upstream_ckpt: "Path | None" = None
    name: "str | None" = None
    device: "str | None" = None
    steps: "int | None" = None  # None: the config's SUPERB step count
    workers: "int | None" = None
    override: "str | None" = None  # extra s3prl -o text, appended last
    feature_cache_mb: float = 0.0  # usad/usad_teacher upstreams: per-file feature cache budget
    seed: "int | None" = None  # run_downstream's --seed (None: its default, 1337)
    evaluate_dev: bool = False  # also evaluate the selected checkpoint on dev, into BEST_DEV_DIR
    python: str = sys.executable

    @property
    def recipe(self) -> Recipe:
        return get_recipe(self.task)

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.upstream}-{self.upstream_ckpt.stem}" if self.upstream_ckpt else self.upstream

    @property
    def expdir(self) -> Path:
        base = Path(self.runs_dir) / "superb" / self.recipe.task / self.model_name
        return (base if self.seed is None else base / f"seed-{self.seed}").resolve()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stream(cmd: Sequence[str], log: Path, env: dict[str, str]) -> int:
    """Run cmd, copying its stdout+stderr both to our stdout and to `log` (appended).

    SIGTERM is turned into KeyboardInterrupt meanwhile, so a killed recipe takes its s3prl child
    down with it and records the stage as interrupted instead of leaving an orphan training.
    """
    main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
    try:
        return _stream_to(cmd, log, env)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _stream_to(cmd: Sequence[str], log: Path, env: dict[str, str]) -> int:
    with log.open("ab") as sink:
        sink.write(f"\n=== {now()} $ {' '.join(cmd)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        try:
            while True:
                chunk = proc.stdout.read1(1 << 14)
                if not chunk:
                    break
                sink.write(chunk)
                sink.flush()
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc.wait()


class _Stages:
    """Bookkeeping of stage status in the manifest."""

    def __init__(self, run: SuperbRun, manifest: dict) -> None:
        self.run, self.manifest = run, manifest

    def status(self, stage: str) -> str:
        return self.manifest["stages"][stage]["status"]

    def set(self, stage: str, status: str, **info: object) -> None:
        entry = self.manifest["stages"][stage]
        entry.update(info, status=status)
        entry["finished" if status in ("done", "failed") else "started"] = now()
        self.manifest["owner"] = owner()
        write_manifest(self.run.expdir, self.manifest)


def _open_manifest(run: SuperbRun, ckpt_hash: str) -> dict:
    old = read_manifest(run.expdir)
    if old is not None:
        same = (old.get("upstream"), old.get("checkpoint_hash")) == (run.upstream, ckpt_hash)
        if not same:
            raise ValueError(
                f"{run.expdir} holds a run of upstream {old.get('upstream')!r} (checkpoint {old.get('checkpoint_hash')!r}), "
                f"not {run.upstream!r} ({ckpt_hash!r}); pick another --name"
            )
        return old
    return {
        "benchmark": SUPERB, "task": run.recipe.task, "model": run.model_name, "upstream": run.upstream,
        "checkpoint": str(run.upstream_ckpt.resolve()) if run.upstream_ckpt else None, "checkpoint_hash": ckpt_hash,
        "data": str(Path(run.data).resolve()), "config": str(run.recipe.config), "steps": run.steps,
        "seed": run.seed, "created": now(), "stages": {s: {"status": "pending"} for s in STAGES},
    }


def _overrides(run: SuperbRun, data_values: dict[str, object]) -> str:
    values = dict(data_values)
    if run.steps is not None:
        values.update(step_overrides(run.recipe, run.steps))
    if run.workers is not None:
        values[run.recipe.workers_key] = run.workers
    text = format_overrides(values)
    if not run.override:
        return text
    for key in unknown_config_keys(run.recipe.config, run.override):
        print(f"warning: -o {key}: no such key in {run.recipe.config}; s3prl will add it, and the "
              f"downstream reads it only if it asks for that name", file=sys.stderr)
    return f"{text},,{run.override}"


def _selected(run: SuperbRun) -> list[Path]:
    """The best-dev checkpoint; without a dev criterion (ASV) every kept checkpoint."""
    states = sorted(run.expdir.glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
    if not run.recipe.best_names:
        return states
    for name in run.recipe.best_names:
        if (run.expdir / name).is_file():
            return [run.expdir / name]
    # No dev evaluation ever improved on s3prl's initial best (e.g. accuracy stuck at 0).
    return states[-1:]


def dev_split(recipe: Recipe) -> "str | None":
    """The dev split the expert selects on, read from its best-checkpoint name (dev-best.ckpt)."""
    name = recipe.best_names[0] if recipe.best_names else ""
    return name[: -len("-best.ckpt")] if name.endswith("-best.ckpt") else None


def run_superb(run: SuperbRun) -> Path:
    """Train, select and test one task; returns the experiment directory."""
    recipe = run.recipe
    data = Path(run.data)
    if not data.is_dir():
        raise ValueError(f"--data {data}: not a directory")
    if run.upstream_ckpt is not None and not Path(run.upstream_ckpt).is_file():
        raise ValueError(f"upstream checkpoint not found: {run.upstream_ckpt}")
    expdir = run.expdir
    ckpt_hash = file_hash(run.upstream_ckpt) if run.upstream_ckpt else ""
    stages = _Stages(run, _open_manifest(run, ckpt_hash))
    overrides = _overrides(run, recipe.data(data.resolve(), expdir))  # checks the data layout first
    expdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if recipe.task == "SID":
        env[CACHE_ENV] = str(expdir / "s3prl_cache")
    if run.feature_cache_mb:
        from usad_upstream.upstream.cache import FEATURE_CACHE_ENV  # imports s3prl: only when asked

        env[FEATURE_CACHE_ENV] = str(run.feature_cache_mb)
    entry = [run.python, "-m", "downstream_recipes.superb.s3prl_entry"]
    device = ["--device", run.device] if run.device else []
    train_log, test_log = expdir / s3prl_logs.TRAIN_LOG, expdir / s3prl_logs.TEST_LOG

    def stage(name: str, cmds: list[list[str]], log: Path) -> None:
        stages.set(name, "running")
        for cmd in cmds:
            try:
                rc = _stream(cmd, log, env)
            except KeyboardInterrupt:
                stages.set(name, "interrupted")
                raise
            if rc != 0:
                stages.set(name, "failed", error=f"exit status {rc}; see {log}")
                raise RecipeError(f"SUPERB {recipe.task} {name} stage failed (exit status {rc}); see {log}")

    if stages.status("train") != "done":
        if any(expdir.glob("states-*.ckpt")):
            cmd = [*entry, "-m", "train", "-e", str(expdir), "-o", overrides, *device]
        else:
            cmd = [*entry, "-m", "train", "-u", run.upstream, "-d", recipe.expert, "-c", str(recipe.config),
                   "-p", str(expdir), "-o", overrides, *device]
            if run.seed is not None:  # a resumed run keeps the seed its checkpoint recorded
                cmd += ["--seed", str(run.seed)]
            if run.upstream_ckpt:
                cmd += ["-k", str(Path(run.upstream_ckpt).resolve())]
        stage("train", [cmd], train_log)
        stages.set("train", "done")

    if stages.status("select") != "done":
        chosen = _selected(run)
        if not chosen:
            stages.set("select", "failed", error="no checkpoint saved by training")
            raise RecipeError(f"SUPERB {recipe.task}: training saved no checkpoint in {expdir}")
        fallback = bool(recipe.best_names) and chosen[0].name not in recipe.best_names
        stages.set("select", "done", checkpoints=[p.name for p in chosen],
                   note="no dev improvement was saved; using the last checkpoint" if fallback else "")

    if stages.status("test") != "done":
        chosen = [expdir / n for n in stages.manifest["stages"]["select"]["checkpoints"]]
        test_log.unlink(missing_ok=True)  # a rerun of the test stage starts a fresh log
        test_overrides = f"{format_overrides({'args.expdir': expdir})},,{overrides}"
        cmds = [[*entry, "-m", "evaluate", "-e", str(c), "-t", recipe.test_split, "-o", test_overrides, *device]
                for c in chosen]
        stage("test", cmds, test_log)
        spec = SUPERB_TASKS[recipe.task]
        scores = s3prl_logs.select_scores(s3prl_logs.observations(expdir), spec.metric, spec.higher_is_better)
        if scores.test is None:
            stages.set("test", "failed", error=f"no test {spec.metric} line in {test_log}")
            raise RecipeError(f"SUPERB {recipe.task}: the test stage printed no {spec.metric} score; see {test_log}")
        stages.set("test", "done", score=scores.test * spec.scale, dev_score=None if scores.dev is None else scores.dev * spec.scale)

    if run.evaluate_dev and stages.manifest.get("best_dev") != "done":
        split = dev_split(recipe)
        if split is None:
            raise ValueError(f"--evaluate-dev: SUPERB {recipe.task} selects no checkpoint on a dev split")
        out = expdir / BEST_DEV_DIR
        out.mkdir(exist_ok=True)
        chosen = expdir / stages.manifest["stages"]["select"]["checkpoints"][0]
        cmd = [*entry, "-m", "evaluate", "-e", str(chosen), "-t", split, "-o",
               f"{format_overrides({'args.expdir': out})},,{overrides}", *device]
        rc = _stream(cmd, out / "usad_dev.log", env)
        if rc != 0:
            raise RecipeError(f"SUPERB {recipe.task}: evaluating {chosen.name} on {split} failed (exit status {rc}); "
                              f"see {out / 'usad_dev.log'}")
        stages.manifest["best_dev"] = "done"
        write_manifest(expdir, stages.manifest)
    return expdir
