"""How sure a measured score is: a percentile bootstrap over probe seeds and test items.

Every score the demo reports is a ratio of sums over test items, so one run of a probe is fully
described by two numbers per item (`Outcomes`): accuracy = sum(correct) / sum(1), PER =
sum(edits) / sum(reference phones), event-onset F = sum(2 TP) / sum(system + reference events).
A run with several seeds is a [seeds x items] table of them (`Runs`), and its score is the mean of
the seeds' scores.

A bootstrap draw resamples both sources of noise at once: the seeds (with replacement, S of S)
and the test items (with replacement, N of N; or whole groups of items, such as the utterances of
one voice, when items are not independent). Each drawn seed is scored on the drawn items, and the
draw's score is the mean over the drawn seeds. Two models compared on the same test set are
paired: the same draw (the same seed positions and the same items) scores both, so the ratio of
their scores keeps what they have in common out of its interval. The 2.5 and 97.5 percentiles
of the draws give the 95% interval.

With S seeds, seed resampling can only reach the spread of those S seeds (3 seeds: 10 distinct
draws), so the seed part of an interval is a lower bound on that noise; the item part dominates
on test sets of ~200 items.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DRAWS = 10000
LEVEL = 0.95


class IntervalError(ValueError):
    """Runs that cannot be combined (different test items, no seeds, bad numbers)."""


@dataclass(frozen=True)
class Outcomes:
    """One probe run's per-item outcome: its score is 100 * num.sum() / den.sum().

    `ids` name the test items (files), so two runs can be checked to score the same items;
    `groups` (optional, one label per item) names the unit that is resampled: items of one
    group (a voice, a recording) are drawn together."""

    ids: tuple[str, ...]
    num: np.ndarray
    den: np.ndarray
    groups: "tuple[str, ...] | None" = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if n == 0:
            raise IntervalError("no test items")
        if len(set(self.ids)) != n:
            raise IntervalError("test item ids repeat")
        for name in ("num", "den"):
            value = np.asarray(getattr(self, name), dtype=float)
            if value.shape != (n,) or not np.isfinite(value).all() or (value < 0).any():
                raise IntervalError(f"{name}: expected {n} finite numbers >= 0, got shape {value.shape}")
            object.__setattr__(self, name, value)
        if self.groups is not None and len(self.groups) != n:
            raise IntervalError(f"groups: expected {n} labels, got {len(self.groups)}")

    @property
    def score(self) -> float:
        return ratio_of_sums(self.num.sum(), self.den.sum())

    def aligned(self, ids: Sequence[str]) -> "Outcomes":
        """The same outcomes in the order of `ids` (which must be the same set of items)."""
        if tuple(ids) == self.ids:
            return self
        if set(ids) != set(self.ids):
            only_here, only_there = sorted(set(self.ids) - set(ids)), sorted(set(ids) - set(self.ids))
            raise IntervalError(f"runs score different test items: {len(only_here)} only in one "
                                f"(e.g. {only_here[:2]}), {len(only_there)} only in the other (e.g. {only_there[:2]})")
        where = {item: i for i, item in enumerate(self.ids)}
        order = [where[item] for item in ids]
        groups = None if self.groups is None else tuple(self.groups[i] for i in order)
        return Outcomes(tuple(ids), self.num[order], self.den[order], groups)


def ratio_of_sums(num: "float | np.ndarray", den: "float | np.ndarray") -> "float | np.ndarray":
    """100 * num / den, with 0 / 0 = 0 (heareval scores an F-measure without events as 0)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.divide(100.0 * num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class Runs:
    """A model's runs of one probe on one split: seeds x items, items in the same order."""

    seeds: tuple[int, ...]
    ids: tuple[str, ...]
    num: np.ndarray  # [seeds, items]
    den: np.ndarray
    groups: np.ndarray  # [items] integer group of each item

    @classmethod
    def of(cls, by_seed: "dict[int, Outcomes]") -> "Runs":
        if not by_seed:
            raise IntervalError("no runs")
        seeds = tuple(sorted(by_seed))
        first = by_seed[seeds[0]]
        rows = [by_seed[s].aligned(first.ids) for s in seeds]
        return cls(seeds, first.ids, np.stack([r.num for r in rows]), np.stack([r.den for r in rows]),
                   _group_index(first.groups, len(first.ids)))

    @property
    def seed_scores(self) -> np.ndarray:
        return ratio_of_sums(self.num.sum(1), self.den.sum(1))

    @property
    def score(self) -> float:
        """The reported number: the mean over seeds of each seed's score."""
        return float(self.seed_scores.mean())

    def restricted(self, seeds: Sequence[int], ids: Sequence[str]) -> "Runs":
        rows = [self.seeds.index(s) for s in seeds]
        where = {item: i for i, item in enumerate(self.ids)}
        cols = [where[item] for item in ids]
        return Runs(tuple(seeds), tuple(ids), self.num[np.ix_(rows, cols)], self.den[np.ix_(rows, cols)],
                    _renumber(self.groups[cols]))

    def replicates(self, draw: "Draw") -> np.ndarray:
        """The score of every bootstrap draw, [draws]."""
        num = draw.counts @ self.num.T  # [draws, seeds]: each seed's sums over the drawn items
        den = draw.counts @ self.den.T
        scores = ratio_of_sums(num, den)
        return np.take_along_axis(scores, draw.seeds, axis=1).mean(1)


def _group_index(groups: "tuple[str, ...] | None", n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    _, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    return index.reshape(-1)


def _renumber(groups: np.ndarray) -> np.ndarray:
    return np.unique(groups, return_inverse=True)[1].reshape(-1)


@dataclass(frozen=True)
class Draw:
    """Bootstrap draws shared by every model scored on the same test set (the pairing)."""

    counts: np.ndarray  # [draws, items]: how often each item is in the draw
    seeds: np.ndarray  # [draws, seeds]: positions of the drawn seeds

    @classmethod
    def sample(cls, n_seeds: int, groups: np.ndarray, rng: np.random.Generator, draws: int = DRAWS) -> "Draw":
        """Draw seeds (S of S) and groups of items (G of G), both with replacement."""
        n_groups = int(groups.max()) + 1
        picked = rng.integers(0, n_groups, size=(draws, n_groups))
        per_group = np.zeros((draws, n_groups))
        np.add.at(per_group, (np.arange(draws)[:, None], picked), 1.0)
        return cls(per_group[:, groups], rng.integers(0, n_seeds, size=(draws, n_seeds)))


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval; `seeds` and `groups` say what was resampled."""

    value: float
    low: float
    high: float
    seeds: tuple[int, ...]
    items: int
    groups: int
    level: float = LEVEL

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level,
                "seeds": list(self.seeds), "items": self.items, "resampled groups": self.groups}


def percentiles(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def score_interval(runs: Runs, draws: int = DRAWS, seed: int = 0) -> Interval:
    """Mean over seeds and its interval over seeds x items."""
    draw = Draw.sample(len(runs.seeds), runs.groups, _rng(seed), draws)
    low, high = percentiles(runs.replicates(draw))
    return Interval(runs.score, low, high, runs.seeds, len(runs.ids), int(runs.groups.max()) + 1)


def paired(a: Runs, b: Runs) -> tuple[Runs, Runs]:
    """Both models on their common seeds, items in one order (an error if the items differ)."""
    seeds = [s for s in a.seeds if s in b.seeds]
    if not seeds:
        raise IntervalError(f"no seed in common to pair on (seeds {list(a.seeds)} and {list(b.seeds)})")
    if set(a.ids) != set(b.ids):
        Outcomes(a.ids, np.zeros(len(a.ids)), np.zeros(len(a.ids))).aligned(b.ids)  # raises, naming items
    return a.restricted(seeds, a.ids), b.restricted(seeds, a.ids)


def paired_interval(a: Runs, b: Runs, combine: Callable[[np.ndarray, np.ndarray], np.ndarray],
                    draws: int = DRAWS, seed: int = 0) -> Interval:
    """combine(score_a, score_b) (e.g. their ratio) with a paired bootstrap: each draw takes the
    same seed positions and the same test items for both models. The groups are `a`'s."""
    a, b = paired(a, b)
    draw = Draw.sample(len(a.seeds), a.groups, _rng(seed), draws)
    value = float(combine(np.asarray(a.score), np.asarray(b.score)))
    low, high = percentiles(combine(a.replicates(draw), b.replicates(draw)))
    return Interval(value, low, high, a.seeds, len(a.ids), int(a.groups.max()) + 1)


def safe_ratio(lower_is_better: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """student / teacher, defined where the teacher scores 0: higher-is-better 1 if the student
    is at least as good (else 0), error rates 1 if both are 0 (else infinite)."""

    def ratio(s: np.ndarray, t: np.ndarray) -> np.ndarray:
        s, t = np.asarray(s, dtype=float), np.asarray(t, dtype=float)
        at_zero = np.where(s == 0, 1.0, math.inf) if lower_is_better else np.where(s >= t, 1.0, 0.0)
        return np.where(t > 0, s / np.where(t > 0, t, 1.0), at_zero)

    return ratio


def mean_difference_interval(tasks: Sequence[tuple[Runs, Runs, bool]], draws: int = DRAWS, seed: int = 0) -> Interval:
    """Mean over tasks of a's goodness minus b's (goodness = the score, or 100 - score for error
    rates), each task bootstrapped on its own test set, paired between a and b within a task."""
    if not tasks:
        raise IntervalError("no tasks")
    rng = _rng(seed)
    value, reps = 0.0, np.zeros(draws)
    for a, b, lower in tasks:
        a, b = paired(a, b)
        draw = Draw.sample(len(a.seeds), a.groups, rng, draws)
        sign = -1.0 if lower else 1.0
        value += sign * (a.score - b.score)
        reps += sign * (a.replicates(draw) - b.replicates(draw))
    low, high = percentiles(reps / len(tasks))
    seeds = tuple(sorted({s for a, _, _ in tasks for s in a.seeds}))
    return Interval(value / len(tasks), low, high, seeds, sum(len(a.ids) for a, _, _ in tasks),
                    sum(int(a.groups.max()) + 1 for a, _, _ in tasks))


MET, MISSED, INCONCLUSIVE = "MET", "MISSED", "INCONCLUSIVE"


def verdict(interval: Interval, threshold: float, at_least: bool) -> str:
    """MET when the whole interval is on the rule's side of `threshold` (>= when `at_least`,
    else <=), MISSED when the whole interval is on the other side, else INCONCLUSIVE."""
    if at_least:
        return MET if interval.low >= threshold else (MISSED if interval.high < threshold else INCONCLUSIVE)
    return MET if interval.high <= threshold else (MISSED if interval.low > threshold else INCONCLUSIVE)


def all_of(verdicts: Sequence["str | None"]) -> "str | None":
    """A claim over several tasks: MISSED if any task is MISSED, else None (not established)
    when a task has no verdict, MET if every task is MET, else INCONCLUSIVE."""
    if MISSED in verdicts:
        return MISSED  # whatever the gaps say, "every task" does not hold
    if not verdicts or any(v is None for v in verdicts):
        return None
    return MET if all(v == MET for v in verdicts) else INCONCLUSIVE
