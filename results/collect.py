"""Walk a runs directory and gather every measured score into one tidy table.

Finds (anywhere below RUNS_DIR):
- SUPERB runs: s3prl experiment directories (an `args_*.yaml` is s3prl's mark), named by
  the recipe's `usad_run.json` when present, else by s3prl's saved args;
- HEAR runs: heareval embeddings task directories (`task_metadata.json` next to
  `.done.embeddings`, `*.embedding-dimensions.json` or `test.predicted-scores.json`), plus the
  tasks a recipe manifest lists that have not produced anything yet;
- X-ARES runs (`usad xares run` manifests): xares's own mlp_score.txt / knn_score.txt per task.
A task with no test score still gets a row (score NaN) whose status says why: running,
interrupted, failed, no predictions, ...

Runs with several probe seeds give one row per seed (column `seed`: the seed the tool used, its
default when none was asked for: s3prl's 1337, heareval's 42); `run_path` is the directory that
holds the run's per-item predictions (results.items).
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import pandas as pd

from . import heareval_scores, s3prl_logs, xares_scores
from .manifest import MANIFEST, checkpoint_hash, read_manifest, run_status
from .published import COLUMNS, MEASURED
from .tasks import HEAR, SUPERB, SUPERB_TASKS, XARES, superb_task_for_expert

S3PRL_DEFAULT_SEED = 1337  # run_downstream's --seed default
HEAREVAL_SEED = 42  # heareval's predictions runner: seed_everything(42)


def _mtime_date(paths: list[Path]) -> str:
    times = [p.stat().st_mtime for p in paths if p.exists()]
    if not times:
        return ""
    return _dt.datetime.fromtimestamp(max(times), _dt.timezone.utc).strftime("%Y-%m-%d")


def _row(**kw: object) -> dict:
    return {c: kw.get(c, "") for c in COLUMNS}


def _is_s3prl_expdir(path: Path) -> bool:
    return any(path.glob("args_*.yaml"))


def _is_hear_embeddings_dir(path: Path) -> bool:
    if not (path / "task_metadata.json").is_file():
        return False
    return (
        (path / ".done.embeddings").exists()
        or (path / heareval_scores.SCORES_FILE).is_file()
        or any(path.glob("*.embedding-dimensions.json"))
    )


def _superb_rows(expdir: Path, runs_dir: Path) -> list[dict]:
    manifest = read_manifest(expdir)
    args = s3prl_logs.read_args(expdir)
    if manifest and manifest.get("benchmark") == SUPERB:
        task = str(manifest.get("task", ""))
        model = str(manifest.get("model", ""))
        ckpt_hash = str(manifest.get("checkpoint_hash", "") or "")
    else:
        expert = str(args.get("downstream", ""))
        corpus = (s3prl_logs.read_config(expdir).get("downstream_expert", {}) or {}).get("corpus", {}) or {}
        task = superb_task_for_expert(expert, corpus.get("name") if isinstance(corpus, dict) else None) or ""
        upstream = str(args.get("upstream", "") or "unknown")
        ckpt = args.get("upstream_ckpt")
        model = f"{upstream}:{Path(str(ckpt)).stem}" if ckpt else upstream
        ckpt_hash = checkpoint_hash(ckpt) if ckpt and Path(str(ckpt)).is_file() else ""
    if task not in SUPERB_TASKS:
        return []  # an s3prl experiment that is not a SUPERB task
    spec = SUPERB_TASKS[task]
    obs = s3prl_logs.observations(expdir)
    status = run_status(manifest)
    date = str((manifest or {}).get("updated", ""))[:10] or _mtime_date(
        [expdir / "log.log", expdir / s3prl_logs.TEST_LOG, *expdir.glob("events.out.tfevents.*")]
    )
    run_id = expdir.relative_to(runs_dir).as_posix()
    seed = (manifest or {}).get("seed")
    seed = seed if seed is not None else args.get("seed", S3PRL_DEFAULT_SEED)
    rows = []
    primary = s3prl_logs.select_scores(obs, spec.metric, spec.higher_is_better)
    for metric, higher in spec.metrics:
        picked = primary if metric == spec.metric else s3prl_logs.select_scores(obs, metric, higher, follow=primary)
        if metric != spec.metric and picked.dev is None and picked.test is None:
            continue  # a secondary metric the expert did not log (older configs): not a gap
        for split, value in (("dev", picked.dev), ("test", picked.test)):
            if value is not None and not math.isnan(value):
                row_status = "done" if status in ("done", "unknown") else status
                score = value * spec.scale
            else:
                row_status = status if status not in ("done", "unknown") else "missing"
                score = float("nan")
            if split == "dev" and value is None and (status == "unknown" or not spec.has_dev):
                continue  # no dev score expected: not a gap
            rows.append(_row(model=model, checkpoint_hash=ckpt_hash, benchmark=SUPERB, task=task, metric=metric,
                             split=split, score=score, run_id=run_id, date=date, source=MEASURED, status=row_status,
                             seed=seed, run_path=str(expdir)))
    return rows


def _hear_rows(task_dir: Path, model: str, ckpt_hash: str, run_status_: str, run_id: str, date: str,
               failed: bool = False, seed: int = HEAREVAL_SEED) -> list[dict]:
    res = heareval_scores.read_task_dir(task_dir)
    rows = []
    for split, value in (("dev", res.dev), ("test", res.test)):
        if value is not None:
            status, score = "done", 100.0 * value
        else:
            status = "failed" if failed else (run_status_ if run_status_ in ("running", "interrupted") else res.status)
            score = float("nan")
        rows.append(_row(model=model, checkpoint_hash=ckpt_hash, benchmark=HEAR, task=res.task, metric=res.metric,
                         split=split, score=score, run_id=run_id, date=date or _mtime_date(
                             [task_dir / heareval_scores.SCORES_FILE]), source=MEASURED, status=status,
                         seed=seed, run_path=str(task_dir)))
    return rows


def _hear_run_rows(run_dir: Path, manifest: dict, runs_dir: Path, seen: set[Path]) -> list[dict]:
    """A HEAR recipe run: its embeddings directory (or, with seeds, each seed's predictions
    directory) plus the tasks it has not reached yet."""
    emb = (run_dir / str(manifest.get("embeddings_dir", "embeddings"))).resolve()
    model = str(manifest.get("model", ""))
    ckpt_hash = str(manifest.get("checkpoint_hash", "") or "")
    status = run_status(manifest)
    date = str(manifest.get("updated", ""))[:10]
    seeds = [int(s) for s in manifest.get("seeds") or ()]
    rows = []
    for name, info in sorted((manifest.get("tasks") or {}).items()):
        seen.add(emb / name)
        failed = info.get("status") == "failed"
        places = [(run_dir / f"seed-{s}" / name, s) for s in seeds] or [(emb / name, HEAREVAL_SEED)]
        for task_dir, seed in places:
            seen.add(task_dir)
            run_id = task_dir.parent.relative_to(runs_dir).as_posix() if seeds else run_dir.relative_to(runs_dir).as_posix()
            if (task_dir / "task_metadata.json").is_file():
                rows += _hear_rows(task_dir, model, ckpt_hash, status, run_id, date, failed, seed)
                continue
            task = heareval_scores.hear_task_name(name, str(info.get("task_name", name)))
            gap = "failed" if failed else (status if status in ("running", "interrupted") else "missing")
            for split in ("dev", "test"):
                rows.append(_row(model=model, checkpoint_hash=ckpt_hash, benchmark=HEAR, task=task,
                                 metric=str(info.get("metric", "")), split=split, score=float("nan"),
                                 run_id=run_id, date=date, source=MEASURED, status=gap, seed=seed))
    return rows


def _xares_run_rows(run_dir: Path, manifest: dict, runs_dir: Path) -> list[dict]:
    """An X-ARES run: per task, the scores xares wrote (x100), or the task's status in their place."""
    env = run_dir / str(manifest.get("env_dir", "env"))
    status = run_status(manifest)
    common = dict(model=str(manifest.get("model", "")), checkpoint_hash=str(manifest.get("checkpoint_hash", "") or ""),
                  benchmark=XARES, split="test", run_id=run_dir.relative_to(runs_dir).as_posix(),
                  date=str(manifest.get("updated", ""))[:10], source=MEASURED)
    rows = []
    for name, info in sorted((manifest.get("tasks") or {}).items()):
        where = xares_scores.scores_dir(env, name, str(manifest.get("encoder_class", "")))
        metrics = {"mlp": f"mlp_{info.get('metric', '')}", "knn": "knn_accuracy"}  # xares's kNN always scores accuracy
        gap = "failed" if info.get("status") == "failed" else (status if status in ("running", "interrupted") else "missing")
        for method in metrics if info.get("knn", True) else ("mlp",):
            score = xares_scores.read_score(where, method)
            rows.append(_row(task=str(info.get("formal_name", name)), metric=metrics[method],
                             score=100.0 * score.value if score else float("nan"), status="done" if score else gap, **common))
    return rows


def collect(runs_dir: "str | Path") -> pd.DataFrame:
    """All measured rows under `runs_dir` (columns: results.published.COLUMNS)."""
    runs_dir = Path(runs_dir).resolve()
    if not runs_dir.is_dir():
        raise ValueError(f"runs directory not found: {runs_dir}")
    rows: list[dict] = []
    seen: set[Path] = set()
    for path in sorted(runs_dir.rglob(MANIFEST)):
        manifest = read_manifest(path.parent)
        if manifest and manifest.get("benchmark") == HEAR:
            rows += _hear_run_rows(path.parent, manifest, runs_dir, seen)
        elif manifest and manifest.get("benchmark") == XARES:
            rows += _xares_run_rows(path.parent, manifest, runs_dir)
    for path in [runs_dir, *sorted(p for p in runs_dir.rglob("*") if p.is_dir())]:  # a run dir itself too
        if _is_s3prl_expdir(path):
            rows += _superb_rows(path, runs_dir)
        elif path != runs_dir and path.resolve() not in seen and _is_hear_embeddings_dir(path):
            # heareval run by hand: embeddings/<module>/<task>; the module names the model.
            rows += _hear_rows(path, path.parent.name, "", "unknown",
                               path.parent.relative_to(runs_dir).as_posix(), "")
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["score"] = df["score"].astype(float)
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    return df


def score_table(measured: pd.DataFrame) -> str:
    """One line per (benchmark, model, task): metric, dev and test scores, status; what `usad
    superb run` and `usad hear run` print at the end, read the way the leaderboard reads it."""
    if measured.empty:
        return "(no scores)"
    lines = []
    for (benchmark, model, task), rows in measured.groupby(["benchmark", "model", "task"], sort=False):
        scores = {split: float(rows.loc[rows["split"] == split, "score"].iloc[0]) if (rows["split"] == split).any()
                  else float("nan") for split in ("dev", "test")}
        status = ", ".join(sorted(set(rows["status"]) - {"done"})) or "done"
        lines.append({"benchmark": benchmark, "model": model, "task": task, "metric": rows["metric"].iloc[0],
                      **{split: "-" if math.isnan(v) else f"{v:.2f}" for split, v in scores.items()}, "status": status})
    return pd.DataFrame(lines).to_string(index=False)
