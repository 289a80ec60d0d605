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
The upstream name and checkpoint are checked before anything starts or is written, so a typo
costs one line and leaves no run directory. s3prl's output goes to the logs; `verbose` also
streams it.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from results import s3prl_logs
from results.manifest import (checkpoint_hash, default_model_name, now, owner, read_manifest, refuse_other_run, resolved_checkpoint,
                              write_manifest)
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
    trust_remote_code: bool = False  # usad upstream on a release snapshot: let its own code run
    verbose: bool = False  # stream s3prl's output too (it always goes to the stage logs)
    seed: "int | None" = None  # run_downstream's --seed (None: its default, 1337)
    evaluate_dev: bool = False  # also evaluate the selected checkpoint on dev, into BEST_DEV_DIR
    python: str = sys.executable

    @property
    def recipe(self) -> Recipe:
        return get_recipe(self.task)

    @property
    def model_name(self) -> str:
        return self.name or default_model_name(self.upstream, self.upstream_ckpt)

    @property
    def expdir(self) -> Path:
        base = Path(self.runs_dir) / "superb" / self.recipe.task / self.model_name
        return (base if self.seed is None else base / f"seed-{self.seed}").resolve()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stream(cmd: Sequence[str], log: Path, env: dict[str, str], echo: bool = False) -> int:
    """Run cmd, its stdout+stderr appended to `log`, and copied to our stdout when `echo`
    (otherwise only s3prl's overall progress bar is shown, on a terminal).

    SIGTERM is turned into KeyboardInterrupt meanwhile, so a killed recipe takes its s3prl child
    down with it and records the stage as interrupted instead of leaving an orphan training.
    """
    main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
    try:
        return _stream_to(cmd, log, env, echo)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


_PROGRESS = re.compile(rb"overall:[^\r\n]*")  # s3prl's tqdm bar over the training steps


def _stream_to(cmd: Sequence[str], log: Path, env: dict[str, str], echo: bool) -> int:
    progress = not echo and sys.stderr.isatty()
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
                if echo:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                elif progress and (bars := _PROGRESS.findall(chunk)):
                    sys.stderr.write("\r" + bars[-1].decode(errors="replace").rstrip()[:120])
                    sys.stderr.flush()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if progress:
                sys.stderr.write("\n")
        return proc.wait()


def _tail(log: Path, lines: int = 15) -> str:
    """The last non-empty lines of a stage log: where s3prl's error is."""
    text = log.read_text(errors="replace").replace("\r", "\n") if log.is_file() else ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


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


def _checkpoint(run: SuperbRun) -> tuple["str | None", str]:
    """(-k for s3prl, its content hash): the usad upstreams take any form the library resolves (a
    file, a release snapshot, a hub id: hashed over config.json + weights); other upstreams a file."""
    if run.upstream_ckpt is None:
        return None, ""
    if run.upstream in ("usad", "usad_local"):
        return resolved_checkpoint(run.upstream_ckpt)
    if not Path(run.upstream_ckpt).is_file():
        raise ValueError(f"upstream checkpoint not found: {run.upstream_ckpt}")
    return str(Path(run.upstream_ckpt).resolve()), checkpoint_hash(run.upstream_ckpt)


def _open_manifest(run: SuperbRun, ckpt: "str | None", ckpt_hash: str) -> dict:
    old = read_manifest(run.expdir)
    if old is not None:
        refuse_other_run(run.expdir, old, {"upstream": run.upstream, "checkpoint_hash": ckpt_hash}, run.upstream_ckpt)
        return old
    return {
        "benchmark": SUPERB, "task": run.recipe.task, "model": run.model_name, "upstream": run.upstream,
        "checkpoint": ckpt, "checkpoint_hash": ckpt_hash,
        "data": str(Path(run.data).resolve()), "config": str(run.recipe.config), "steps": run.steps,
        "seed": run.seed, "created": now(), "stages": {s: {"status": "pending"} for s in STAGES},
    }


def load_upstream_once(upstream: str, ckpt: "str | None", trust_remote_code: bool = False) -> None:
    """Build the project's upstreams (usad, usad_local, usad_teacher) from their checkpoint or
    spec once, so a wrong file fails in one line before s3prl starts (and not after its imports)."""
    from usad_upstream.upstream.hubconf import ENTRIES

    if upstream not in ENTRIES:
        return
    options = {"trust_remote_code": True} if trust_remote_code and upstream != "usad_teacher" else {}
    ENTRIES[upstream](ckpt=ckpt, **options)  # raises UsadUpstreamError (a ValueError) naming the problem


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
    from usad_upstream.upstream.hubconf import check_upstream_name  # imports s3prl

    check_upstream_name(run.upstream)  # a typo: one line naming the close names
    ckpt, ckpt_hash = _checkpoint(run)
    load_upstream_once(run.upstream, ckpt, run.trust_remote_code)
    expdir = run.expdir
    created = next((p for p in reversed([expdir, *expdir.parents]) if not p.exists()), None)  # top new folder
    try:
        stages = _Stages(run, _open_manifest(run, ckpt, ckpt_hash))
        overrides = _overrides(run, recipe.data(data.resolve(), expdir))  # checks the data layout first
    except BaseException:
        if created is not None:  # bad input leaves no run directory behind (PR's data step writes into it)
            shutil.rmtree(created, ignore_errors=True)
        raise
    expdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("TQDM_DISABLE", None)  # s3prl counts its training steps on a tqdm bar: disabled, it never stops
    if recipe.task in ("SID", "ASV"):
        env[CACHE_ENV] = str(expdir / "s3prl_cache")
    if run.trust_remote_code:
        from usad_upstream.release import TRUST_ENV

        env[TRUST_ENV] = "1"
    if run.feature_cache_mb:
        from usad_upstream.upstream.cache import FEATURE_CACHE_ENV  # imports s3prl: only when asked

        env[FEATURE_CACHE_ENV] = str(run.feature_cache_mb)
    entry = [run.python, "-m", "downstream_recipes.superb.s3prl_entry"]
    device = ["--device", run.device] if run.device else []
    train_log, test_log = expdir / s3prl_logs.TRAIN_LOG, expdir / s3prl_logs.TEST_LOG

    def stage(name: str, cmds: list[list[str]], log: Path) -> None:
        stages.set(name, "running")
        if not run.verbose:
            print(f"SUPERB {recipe.task} {run.model_name}: {name} (log: {log})", flush=True)
        for cmd in cmds:
            try:
                rc = _stream(cmd, log, env, run.verbose)
            except KeyboardInterrupt:
                stages.set(name, "interrupted")
                raise
            if rc != 0:
                cause = s3prl_logs.failure_line(log)
                stages.set(name, "failed", error=f"exit status {rc}: {cause}; see {log}")
                if not run.verbose:
                    print(f"--- last lines of {log}:\n{_tail(log)}\n---", file=sys.stderr, flush=True)
                raise RecipeError(f"SUPERB {recipe.task} {name} stage failed (exit status {rc}): {cause}; see {log}; "
                                  f"fix it and run the same command again (finished stages are kept)")

    if not recipe.trains:  # QbE: DTW per layer on dev, the best layer on eval (qbe.py)
        from .qbe import run_qbe

        base = [*entry, "-m", "evaluate", "-u", run.upstream, *(["-k", ckpt] if ckpt else []), "-d", recipe.expert, "-c", str(recipe.config),
                "-p", str(expdir), "-o", overrides, *device]
        run_qbe(run, stages, stage, base, env, train_log, test_log)
        return expdir

    if stages.status("train") != "done":
        if any(expdir.glob("states-*.ckpt")):
            cmd = [*entry, "-m", "train", "-e", str(expdir), "-o", overrides, *device]
        else:
            cmd = [*entry, "-m", "train", "-u", run.upstream, "-d", recipe.expert, "-c", str(recipe.config),
                   "-p", str(expdir), "-o", overrides, *device]
            if run.seed is not None:  # a resumed run keeps the seed its checkpoint recorded
                cmd += ["--seed", str(run.seed)]
            if ckpt:
                cmd += ["-k", ckpt]
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
