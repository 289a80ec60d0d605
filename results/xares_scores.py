"""xares's own score files: what X-ARES wrote is what the leaderboard reports.

xares 0.1.3 writes, per task and encoder, `<env_root>/<task>/checkpoints/<EncoderClass>/`
`mlp_score.txt` (linear probe) and `knn_score.txt` (kNN on the frozen embeddings): two lines,
the test score (0..1, the k-fold mean for k-fold tasks) and the task's weight (its test size).
A missing or unreadable file means no score.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

METHODS = {"mlp": "mlp_score.txt", "knn": "knn_score.txt"}


class Score(NamedTuple):
    value: float
    weight: int


def scores_dir(env_root: Path, task: str, encoder_class: str) -> Path:
    """Where xares keeps one task's probe checkpoints and score files for an encoder class."""
    return Path(env_root) / task / "checkpoints" / encoder_class


def read_score(scores: Path, method: str) -> "Score | None":
    """The score xares wrote for `method` ("mlp" or "knn"), or None if it wrote none."""
    path = Path(scores) / METHODS[method]
    try:
        lines = path.read_text().split()
        return Score(float(lines[0]), int(lines[1]))
    except (OSError, ValueError, IndexError):
        return None
