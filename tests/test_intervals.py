"""results/intervals.py against cases small enough to work out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from results.intervals import (INCONCLUSIVE, MET, MISSED, Draw, IntervalError, Outcomes, Runs, all_of,
                               mean_difference_interval, paired_interval, percentiles, ratio_of_sums, safe_ratio,
                               score_interval, verdict)


def outcomes(correct: list[float], den: "list[float] | None" = None, groups: "tuple[str, ...] | None" = None,
             ids: "tuple[str, ...] | None" = None) -> Outcomes:
    n = len(correct)
    return Outcomes(ids or tuple(f"f{i}" for i in range(n)), np.array(correct, float),
                    np.ones(n) if den is None else np.array(den, float), groups)


def frequencies(values: np.ndarray) -> dict[float, float]:
    keys, counts = np.unique(np.round(values, 9), return_counts=True)
    return {float(k): c / len(values) for k, c in zip(keys, counts)}


def test_ratio_of_sums_and_zero_denominators() -> None:
    assert ratio_of_sums(3, 4) == 75.0
    assert ratio_of_sums(0, 0) == 0.0  # heareval: an F-measure without any event scores 0
    assert list(ratio_of_sums(np.array([1.0, 0.0]), np.array([2.0, 0.0]))) == [50.0, 0.0]
    per = outcomes([1, 3], den=[10, 10])  # 1 + 3 edits over 20 reference phones
    assert per.score == 20.0


def test_two_items_one_seed_matches_the_exact_bootstrap_distribution() -> None:
    # Items [right, wrong], resampled 2 of 2: (r,r) 1/4 -> 100, (r,w) or (w,r) 1/2 -> 50, (w,w) 1/4 -> 0.
    runs = Runs.of({1: outcomes([1, 0])})
    draw = Draw.sample(1, runs.groups, np.random.default_rng(0), draws=40000)
    got = frequencies(runs.replicates(draw))
    assert set(got) == {0.0, 50.0, 100.0}
    assert got[0.0] == pytest.approx(0.25, abs=0.01) and got[50.0] == pytest.approx(0.5, abs=0.01)
    interval = score_interval(runs, draws=40000)
    assert (interval.value, interval.low, interval.high) == (50.0, 0.0, 100.0)


def test_error_rate_items_weigh_by_their_reference_length() -> None:
    # (1 edit / 10 phones), (3 / 30): PER 4/40 = 10; drawing either item twice also gives 10.
    runs = Runs.of({1: outcomes([1, 3], den=[10, 30])})
    interval = score_interval(runs, draws=2000)
    assert (interval.value, interval.low, interval.high) == (10.0, 10.0, 10.0)
    # (1 / 10) and (6 / 20): pooled 7/30 = 23.33; the draws are 10, 23.33 or 30.
    runs = Runs.of({1: outcomes([1, 6], den=[10, 20])})
    draw = Draw.sample(1, runs.groups, np.random.default_rng(1), draws=20000)
    assert set(frequencies(runs.replicates(draw))) == {10.0, round(700 / 30, 9), 30.0}
    assert runs.score == pytest.approx(700 / 30)


def test_seeds_are_resampled_and_averaged() -> None:
    # One item each, so only the seeds vary: seeds scoring 0, 50, 100 (den 2, num 0/1/2).
    runs = Runs.of({7: outcomes([0], den=[2]), 8: outcomes([1], den=[2]), 9: outcomes([2], den=[2])})
    assert runs.score == 50.0 and list(runs.seed_scores) == [0.0, 50.0, 100.0]
    draw = Draw.sample(3, runs.groups, np.random.default_rng(2), draws=54000)
    got = frequencies(runs.replicates(draw))
    # 27 equally likely ordered draws of 3 seeds; the mean is 50 x (sum of the drawn seeds' indices
    # 0, 1, 2) / 3, and the index sums 0..6 occur 1, 3, 6, 7, 6, 3, 1 times.
    counts = {50 * k / 3: n for k, n in enumerate((1, 3, 6, 7, 6, 3, 1))}
    assert set(got) == {round(v, 9) for v in counts}
    for value, n in counts.items():
        assert got[round(value, 9)] == pytest.approx(n / 27, abs=0.01)
    assert min(got) == 0.0 and max(got) == 100.0


def test_groups_are_drawn_whole() -> None:
    # Two voices of two utterances each: voice a right twice, voice b wrong twice. Drawing voices
    # gives 0, 50 or 100; drawing utterances would also give 25 and 75.
    by_voice = Runs.of({1: outcomes([1, 1, 0, 0], groups=("a", "a", "b", "b"))})
    draw = Draw.sample(1, by_voice.groups, np.random.default_rng(3), draws=20000)
    assert set(frequencies(by_voice.replicates(draw))) == {0.0, 50.0, 100.0}
    by_item = Runs.of({1: outcomes([1, 1, 0, 0])})
    draw = Draw.sample(1, by_item.groups, np.random.default_rng(3), draws=20000)
    assert set(frequencies(by_item.replicates(draw))) == {0.0, 25.0, 50.0, 75.0, 100.0}


def test_pairing_cancels_what_two_models_share() -> None:
    # The student gets exactly the teacher's items right: the paired ratio is exactly 1, although
    # each model's own interval is wide.
    items = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    student, teacher = Runs.of({1: outcomes(items), 2: outcomes(items)}), Runs.of({1: outcomes(items), 2: outcomes(items)})
    ratio = paired_interval(student, teacher, safe_ratio(False), draws=5000)
    assert (ratio.value, ratio.low, ratio.high) == (1.0, 1.0, 1.0)
    alone = score_interval(student, draws=5000)
    assert alone.high - alone.low > 40
    # One item more right than the teacher on 10 items, same otherwise: 8/7 in every draw that
    # keeps that item once; never below 1.
    better = items.copy()
    better[1] = 1
    ratio = paired_interval(Runs.of({1: outcomes(better)}), Runs.of({1: outcomes(items)}), safe_ratio(False), draws=5000)
    assert ratio.value == pytest.approx(8 / 7) and ratio.low >= 1.0


def test_pairing_uses_common_seeds_and_item_ids() -> None:
    a = Runs.of({1: outcomes([1, 0], ids=("x", "y")), 2: outcomes([1, 1], ids=("x", "y"))})
    b = Runs.of({2: outcomes([1, 0], ids=("y", "x")), 3: outcomes([0, 0], ids=("y", "x"))})
    ratio = paired_interval(a, b, lambda s, t: s - t, draws=100)
    assert ratio.seeds == (2,)
    assert ratio.value == 50.0  # seed 2: a 100, b 50 (x right for b once ids are aligned: y 1, x 0 -> 50)
    with pytest.raises(IntervalError, match="no seed in common"):
        paired_interval(a, Runs.of({5: outcomes([1, 0], ids=("x", "y"))}), lambda s, t: s - t)
    with pytest.raises(IntervalError, match="different test items"):
        paired_interval(a, Runs.of({1: outcomes([1, 0], ids=("x", "z"))}), lambda s, t: s - t)


def test_safe_ratio_conventions() -> None:
    higher, lower = safe_ratio(False), safe_ratio(True)
    assert higher(np.array(45.0), np.array(50.0)) == pytest.approx(0.9)
    assert higher(np.array(0.0), np.array(0.0)) == 1.0 and higher(np.array(0.0), np.array(-0.0)) == 1.0
    assert lower(np.array(0.0), np.array(0.0)) == 1.0 and math.isinf(lower(np.array(1.0), np.array(0.0)))
    assert list(higher(np.array([1.0, 2.0]), np.array([2.0, 0.0]))) == [0.5, 1.0]


def test_mean_difference_over_tasks_flips_error_rates() -> None:
    # Task 1 accuracy: a 100, b 50 (+50). Task 2 error rate: a 20, b 10 (a is 10 worse: -10).
    # Mean difference of goodness (100 - PER for error rates): (50 - 10) / 2 = 20.
    t1 = (Runs.of({1: outcomes([1, 1])}), Runs.of({1: outcomes([1, 0])}), False)
    t2 = (Runs.of({1: outcomes([2], den=[10])}), Runs.of({1: outcomes([1], den=[10])}), True)
    interval = mean_difference_interval([t1, t2], draws=4000)
    assert interval.value == pytest.approx(20.0)
    # task 2 has one item, so its term is always -10; task 1's draws are +0 (both drawn items
    # right for b, prob 1/4), +50 (1/2), +100 (1/4): the means are -5, 20 and 45.
    assert (interval.low, interval.high) == (-5.0, 45.0)
    assert interval.items == 3


def test_verdicts_need_the_whole_interval() -> None:
    def iv(low: float, high: float):
        return score_interval(Runs.of({1: outcomes([1])}), draws=10).__class__(1.0, low, high, (1,), 1, 1)

    assert verdict(iv(0.91, 1.2), 0.9, at_least=True) == MET
    assert verdict(iv(0.9, 1.2), 0.9, at_least=True) == MET
    assert verdict(iv(0.85, 0.95), 0.9, at_least=True) == INCONCLUSIVE
    assert verdict(iv(0.7, 0.89), 0.9, at_least=True) == MISSED
    assert verdict(iv(0.9, 1.1), 1.1, at_least=False) == MET
    assert verdict(iv(1.0, 1.2), 1.1, at_least=False) == INCONCLUSIVE
    assert verdict(iv(1.11, 1.3), 1.1, at_least=False) == MISSED
    assert all_of([MET, MET]) == MET and all_of([MET, INCONCLUSIVE]) == INCONCLUSIVE
    assert all_of([INCONCLUSIVE, MISSED, None]) == MISSED and all_of([MET, None]) is None and all_of([]) is None


def test_same_seed_same_interval_and_percentiles() -> None:
    runs = Runs.of({1: outcomes([1, 0, 1, 1, 0, 0, 1]), 2: outcomes([1, 1, 1, 0, 0, 0, 1])})
    assert score_interval(runs, seed=4) == score_interval(runs, seed=4)
    assert percentiles(np.arange(101.0)) == pytest.approx((2.5, 97.5))


def test_bad_outcomes_are_refused_with_the_reason() -> None:
    with pytest.raises(IntervalError, match="no test items"):
        outcomes([])
    with pytest.raises(IntervalError, match="repeat"):
        outcomes([1, 0], ids=("a", "a"))
    with pytest.raises(IntervalError, match="num: expected 2 finite numbers"):
        Outcomes(("a", "b"), np.array([1.0, math.nan]), np.ones(2))
    with pytest.raises(IntervalError, match="groups: expected 2 labels"):
        outcomes([1, 0], groups=("a",))
    with pytest.raises(IntervalError, match="different test items"):
        Runs.of({1: outcomes([1, 0], ids=("a", "b")), 2: outcomes([1, 0], ids=("a", "c"))})
