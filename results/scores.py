"""Benchmark-level numbers: the SUPERB score and the HEAR average (SPEC section 6).

SUPERB score = 1000/|T| * sum_t (s_t - s_fbank_t) / (s_sota_t - s_fbank_t), with error-rate
tasks sign-flipped so that every term grows as the model gets better: 0 means "as good as
fbank", 1000 means "as good as the state of the art" on every task. Checked against the USAD
paper: WavLM Base+ and DPWavLM frame-level scores (PR, ASR, SD) come out at 946.1 and 751.3 with
the FBANK row of the SUPERB leaderboard and the best published number per task as SOTA.

HEAR average = plain mean of the primary score (x100) over the tasks a model was run on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .tasks import SUPERB_TASKS


@dataclass(frozen=True)
class BenchmarkScore:
    value: "float | None"
    tasks: tuple[str, ...]  # tasks that entered the score
    missing: tuple[str, ...]  # requested tasks left out (no score, no baseline or no SOTA)


def superb_score(
    scores: Mapping[str, float],
    fbank: Mapping[str, float],
    sota: Mapping[str, float],
    tasks: "tuple[str, ...] | None" = None,
) -> BenchmarkScore:
    """SUPERB score over `tasks` (default: every task that has all three numbers).

    All numbers are in the same units per task (percent for rates, MTWV as is).
    """
    wanted = tuple(tasks) if tasks is not None else tuple(t for t in SUPERB_TASKS if t in scores)
    used, missing, total = [], [], 0.0
    for task in wanted:
        if task not in SUPERB_TASKS:
            raise ValueError(f"unknown SUPERB task {task!r}; expected one of {', '.join(SUPERB_TASKS)}")
        if task not in scores or task not in fbank or task not in sota:
            missing.append(task)
            continue
        sign = 1.0 if SUPERB_TASKS[task].higher_is_better else -1.0
        s, f, best = sign * scores[task], sign * fbank[task], sign * sota[task]
        if best == f:
            raise ValueError(f"SUPERB score: SOTA equals the fbank baseline on {task} ({sota[task]}); the term is undefined")
        total += (s - f) / (best - f)
        used.append(task)
    value = 1000.0 * total / len(used) if used else None
    return BenchmarkScore(value, tuple(used), tuple(missing))


def sota_per_task(tables: "list[Mapping[str, Mapping[str, float]]]") -> dict[str, float]:
    """Best number per task over published tables ({model: {task: score}}), by task direction."""
    best: dict[str, float] = {}
    for table in tables:
        for row in table.values():
            for task, value in row.items():
                if task not in SUPERB_TASKS or value != value:  # NaN: not reported
                    continue
                higher = SUPERB_TASKS[task].higher_is_better
                if task not in best or (value > best[task] if higher else value < best[task]):
                    best[task] = value
    return best


def hear_average(scores: Mapping[str, float], tasks: "tuple[str, ...] | None" = None) -> BenchmarkScore:
    """Mean primary score over `tasks` (default: all tasks present)."""
    wanted = tuple(tasks) if tasks is not None else tuple(scores)
    used = tuple(t for t in wanted if t in scores and scores[t] == scores[t])
    missing = tuple(t for t in wanted if t not in used)
    value = sum(scores[t] for t in used) / len(used) if used else None
    return BenchmarkScore(value, used, missing)
