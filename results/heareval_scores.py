"""Read heareval's outputs: one embeddings task directory per (module, task).

Layout written by heareval's runners:
  <embeddings-dir>/<module>[-options]/<task dir>/
      task_metadata.json          copied from the task; "task_name", "evaluation" (metrics)
      .done.embeddings            embeddings runner finished this task
      test.predicted-scores.json  predictions runner finished; written once, at the end
      prediction-done.json

`test.predicted-scores.json` holds one entry per test split ("test", or "fold00", ... for k-fold
tasks) with "test_score" (the first metric of "evaluation") and "validation_score", and for
k-fold tasks "aggregated_scores" with "test_score_mean".
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .tasks import hear_task_name

SCORES_FILE = "test.predicted-scores.json"
_NOT_SPLITS = {"aggregated_scores", "hparams", "postprocessing", "score_mode", "embedding_path"}


@dataclass(frozen=True)
class HearTaskResult:
    """Primary scores of one task directory, in heareval's units (0..1); None when missing."""

    task: str
    metric: str
    dev: "float | None"
    test: "float | None"
    status: str  # "done", "no predictions", "no embeddings"


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def is_task_dir(path: Path) -> bool:
    return (Path(path) / "task_metadata.json").is_file()


def read_task_dir(task_dir: Path) -> HearTaskResult:
    """Scores of one heareval embeddings task directory (partial directories included)."""
    task_dir = Path(task_dir)
    meta = _load_json(task_dir / "task_metadata.json")
    if not isinstance(meta, dict) or "task_name" not in meta:
        raise ValueError(f"{task_dir / 'task_metadata.json'}: expected an object with 'task_name'")
    evaluation = meta.get("evaluation") or []
    metric = str(evaluation[0]) if evaluation else "score"
    name = hear_task_name(task_dir.name, str(meta["task_name"]))
    scores_path = task_dir / SCORES_FILE
    if not scores_path.is_file():
        status = "no predictions" if (task_dir / ".done.embeddings").exists() else "no embeddings"
        return HearTaskResult(name, metric, None, None, status)
    scores = _load_json(scores_path)
    if not isinstance(scores, dict):
        raise ValueError(f"{scores_path}: expected a JSON object")
    splits = {k: v for k, v in scores.items() if k not in _NOT_SPLITS and isinstance(v, dict)}
    if not splits:
        raise ValueError(f"{scores_path}: no per-split results (expected e.g. a 'test' entry)")
    for key, entry in splits.items():
        if "test_score" not in entry:
            raise ValueError(f"{scores_path}: split {key!r} has no 'test_score'")
    aggregated = scores.get("aggregated_scores")
    if isinstance(aggregated, dict) and "test_score_mean" in aggregated:
        test = float(aggregated["test_score_mean"])
    else:
        test = sum(float(v["test_score"]) for v in splits.values()) / len(splits)
    vals = [float(v["validation_score"]) for v in splits.values() if v.get("validation_score") is not None]
    vals = [v for v in vals if not math.isnan(v)]
    dev = sum(vals) / len(vals) if vals else None
    return HearTaskResult(name, metric, dev, test, "done")
