"""From tidy measured rows (one per seed) to one number per model and task with its interval.

A cell is a (model, checkpoint, benchmark, task, split); its seeds are the rows' seeds (the newest
run of each). Where every seed's run left per-item predictions that reproduce its logged score
(results.items), the interval resamples seeds x items (x groups of items where the dataset names
them); elsewhere (dev splits, gaps in the files) it resamples the seeds only, and says so.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import items
from .intervals import DRAWS, IntervalError, Outcomes, Runs, score_interval
from .tasks import SUPERB

# A SUPERB task may log several metrics (SF: slot-type F1 and slot-value CER): each is a cell of its own.
CELL = ["model", "checkpoint_hash", "benchmark", "task", "metric", "split"]
SUMMARY_COLUMNS = [*CELL, "score", "low", "high", "seeds", "items", "groups", "resampled", "status", "run_id"]
# A per-item file whose score differs from the logged one by more than this (points) is not used.
TOLERANCE = 0.01


def latest_per_seed(measured: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and seed: the newest run with a score, else the newest attempt."""
    if measured.empty:
        return measured
    df = measured.copy()
    df["_has"] = df["score"].notna()
    df["_seed"] = df["seed"].fillna(-1) if "seed" in df else -1
    df = df.sort_values(["_has", "date", "run_id"])
    return df.groupby([*CELL, "_seed"], as_index=False, sort=False).tail(1).drop(columns=["_has", "_seed"]).reset_index(drop=True)


def row_outcomes(row: pd.Series) -> "Outcomes | None":
    """The per-item outcomes behind one measured row, when its run left them and they give its score."""
    path = row.get("run_path")
    if not isinstance(path, str) or not path or pd.isna(row["score"]):
        return None
    if row["benchmark"] == SUPERB:  # dev: only the best checkpoint's (usad superb run --evaluate-dev)
        found = items.superb_outcomes(Path(path), str(row["task"]), str(row["split"]))
    else:  # heareval keeps test predictions only
        found = items.hear_outcomes(Path(path), "test") if row["split"] == "test" else None
    if found is None or abs(found.score - float(row["score"])) > TOLERANCE:
        return None
    return found


def cell_runs(rows: pd.DataFrame) -> "tuple[Runs, str] | None":
    """The seeds x items table of one cell's scored rows, and what its interval resamples."""
    rows = rows[rows["score"].notna()]
    if rows.empty:
        return None
    seeds = [int(s) if pd.notna(s) else -1 for s in rows["seed"]]
    per_item = [row_outcomes(row) for _, row in rows.iterrows()]
    if all(o is not None for o in per_item):
        try:
            runs = Runs.of(dict(zip(seeds, per_item)))  # type: ignore[arg-type]
            grouped = per_item[0].groups is not None and len(set(per_item[0].groups)) < len(per_item[0].ids)  # type: ignore[union-attr]
            return runs, "seeds x groups of items" if grouped else "seeds x items"
        except IntervalError:
            pass  # the seeds scored different items: fall back to their scores
    only = {s: Outcomes(("score",), np.array([v]), np.array([100.0])) for s, v in zip(seeds, rows["score"].astype(float))}
    return Runs.of(only), "seeds only"


def summarise(measured: pd.DataFrame, draws: int = DRAWS) -> pd.DataFrame:
    """One row per cell: mean over seeds, 95% interval, what was resampled (SUMMARY_COLUMNS)."""
    if measured.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    out = []
    for key, rows in latest_per_seed(measured).groupby(CELL, sort=False):
        cell = dict(zip(CELL, key))
        found = cell_runs(rows)
        base = {**cell, "run_id": rows["run_id"].iloc[0]}
        if found is None:
            out.append({**base, "score": math.nan, "low": math.nan, "high": math.nan, "seeds": "", "items": 0, "groups": 0,
                        "resampled": "", "status": rows["status"].iloc[-1]})
            continue
        runs, resampled = found
        iv = score_interval(runs, draws=draws)
        out.append({**base, "score": iv.value, "low": iv.low, "high": iv.high,
                    "seeds": " ".join(str(s) for s in runs.seeds if s >= 0), "items": iv.items if resampled != "seeds only" else 0,
                    "groups": iv.groups if resampled != "seeds only" else 0, "resampled": resampled, "status": "done"})
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def runs_by_cell(measured: pd.DataFrame) -> dict[tuple, tuple[Runs, str]]:
    """Every scored cell's seeds x items table (for paired comparisons between models)."""
    if measured.empty:
        return {}
    out = {}
    for key, rows in latest_per_seed(measured).groupby(CELL, sort=False):
        found = cell_runs(rows)
        if found is not None:
            out[tuple(key)] = found
    return out
