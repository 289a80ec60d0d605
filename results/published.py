"""Published numbers (results/reference/*.csv, copied from the papers) as tidy rows.

Every row carries source="published" so a rendered table can never mix them up with numbers
measured here. Units follow the USAD paper: percent for rates and HEAR scores (x100), MTWV as is.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .scores import sota_per_task
from .tasks import HEAR, HEAR_LEADERBOARD_ALIASES, HEAR_TASKS, SUPERB, SUPERB_PUBLISHED_COLUMNS, SUPERB_TASKS

REFERENCE_DIR = Path(__file__).parent / "reference"
# seed: the probe's seed (measured rows); run_path: the directory whose files made the score
# (results.items reads its per-item predictions from there).
COLUMNS = ["model", "checkpoint_hash", "benchmark", "task", "metric", "split", "score", "run_id", "date", "source", "status",
           "seed", "run_path"]
PUBLISHED = "published"
MEASURED = "measured here"

# The files that make up the default comparison (the USAD paper's own tables + FBANK).
PAPER_FILES = ("usad_paper_superb.csv", "usad_paper_hear.csv")


def _row(model: str, benchmark: str, task: str, metric: str, score: float, source_file: str, date: str = "") -> dict:
    return {
        "model": model, "checkpoint_hash": "", "benchmark": benchmark, "task": task, "metric": metric,
        "split": "test", "score": float(score), "run_id": source_file, "date": date,
        "source": PUBLISHED, "status": PUBLISHED,
    }


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"published table not found: {path}")
    return pd.read_csv(path)


def superb_rows(path: Path) -> list[dict]:
    """A SUPERB table with one row per model and columns like PR_per, KS_acc, SID_acc."""
    df = _read(path)
    if "model" not in df.columns:
        raise ValueError(f"{path}: expected a 'model' column, got {list(df.columns)}")
    rows = []
    for _, rec in df.iterrows():
        for col, (task, metric) in SUPERB_PUBLISHED_COLUMNS.items():
            if col in df.columns and pd.notna(rec[col]):
                rows.append(_row(str(rec["model"]), SUPERB, task, metric, rec[col], path.name))
    return rows


def usad_hear_rows(path: Path) -> list[dict]:
    """The USAD paper's HEAR table: one row per task, one column per model, scores x100."""
    df = _read(path)
    if not {"task", "metric"} <= set(df.columns):
        raise ValueError(f"{path}: expected 'task' and 'metric' columns, got {list(df.columns)}")
    models = [c for c in df.columns if c not in ("task", "metric")]
    rows = []
    for _, rec in df.iterrows():
        if str(rec["task"]).lower() == "average":
            continue  # recomputed from the per-task rows
        for model in models:
            if pd.notna(rec[model]):
                rows.append(_row(model, HEAR, str(rec["task"]), str(rec["metric"]), rec[model], path.name))
    return rows


def hear_leaderboard_rows(path: Path) -> list[dict]:
    """The HEAR 2021 leaderboard: one row per model, one column per task, scores in 0..1."""
    df = _read(path)
    if "Model" not in df.columns:
        raise ValueError(f"{path}: expected a 'Model' column, got {list(df.columns)}")
    metric_of = {t.name: t.metric for t in HEAR_TASKS}
    rows = []
    for _, rec in df.iterrows():
        for col in df.columns:
            task = HEAR_LEADERBOARD_ALIASES.get(col, col)
            if task in metric_of and pd.notna(rec[col]):
                date = str(rec.get("Submission Date", "") or "")
                rows.append(_row(str(rec["Model"]), HEAR, task, metric_of[task], 100.0 * float(rec[col]), path.name, date))
    return rows


def load_published(reference_dir: Path = REFERENCE_DIR, which: str = "paper") -> pd.DataFrame:
    """Published rows: "paper" (USAD tables + the FBANK baseline), "all" or "none".

    A model listed in several files keeps the more precise SUPERB leaderboard values.
    """
    if which not in ("paper", "all", "none"):
        raise ValueError(f"published selection must be paper, all or none; got {which!r}")
    if which == "none":
        return pd.DataFrame(columns=COLUMNS)
    ref = Path(reference_dir)
    superb_board = superb_rows(ref / "superb_leaderboard.csv")
    rows = superb_board + superb_rows(ref / "usad_paper_superb.csv") + usad_hear_rows(ref / "usad_paper_hear.csv")
    if which == "all":
        rows += hear_leaderboard_rows(ref / "hear2021_leaderboard.csv")
    else:
        paper_models = {r["model"] for r in rows if r["run_id"] in PAPER_FILES} | {"FBANK"}
        rows = [r for r in rows if r["model"] in paper_models]
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.drop_duplicates(subset=["benchmark", "model", "task", "metric"], keep="first").reset_index(drop=True)


def superb_baselines(reference_dir: Path = REFERENCE_DIR) -> tuple[dict[str, float], dict[str, float]]:
    """(fbank, sota) per SUPERB task from all published SUPERB tables."""
    ref = Path(reference_dir)
    rows = superb_rows(ref / "superb_leaderboard.csv") + superb_rows(ref / "usad_paper_superb.csv")
    primary = {code: t.metric for code, t in SUPERB_TASKS.items()}
    fbank = {r["task"]: r["score"] for r in rows if r["model"] == "FBANK" and r["metric"] == primary[r["task"]]}
    tables: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["model"] != "FBANK" and r["metric"] == primary[r["task"]]:
            tables.setdefault(f"{r['run_id']}:{r['model']}", {})[r["task"]] = r["score"]
    return fbank, sota_per_task([tables])
