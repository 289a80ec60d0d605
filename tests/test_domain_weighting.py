"""USAD 2.0's objective: domain-aware teacher weighting, per-teacher layer lists, and a teacher
faster than the student (its targets mean-pooled)."""
from __future__ import annotations

import pytest
import torch

from test_objective import identity_heads
from usad_upstream.distill.data import DOMAINS
from usad_upstream.distill.objective import (
    DistillObjective,
    Targets,
    TeacherSpec,
    domain_weight_table,
    explicit_mapping,
    frame_losses,
    resolve_layers,
)

SPEECH, SOUND, MUSIC = (DOMAINS.index(d) for d in ("speech", "sound", "music"))
THREE = [TeacherSpec("wavlm", 2, 3, 50.0, domain="speech"), TeacherSpec("atst", 2, 3, 50.0, domain="sound"),
         TeacherSpec("muq", 2, 3, 50.0, domain="music")]


def test_weight_table_is_the_papers_formula() -> None:
    table = domain_weight_table(THREE, 10.0)
    # rows speech, sound, music, unknown; columns wavlm, atst, muq: w/(w+M-1) = 10/12, 1/(w+M-1) = 1/12
    expected = torch.tensor([[10, 1, 1], [1, 10, 1], [1, 1, 10], [4, 4, 4]], dtype=torch.float32) / 12
    torch.testing.assert_close(table, expected)
    # two teachers (speech, sound): a music clip is claimed by none, so both weigh 1/2
    two = domain_weight_table(THREE[:2], 10.0)
    torch.testing.assert_close(two[MUSIC], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(two[SPEECH], torch.tensor([10 / 11, 1 / 11]))
    # off: every clip weighs the teachers by their `weight` only (today's weighting)
    weighted = [TeacherSpec("a", 2, 3, 50.0, weight=3.0, domain="speech"), TeacherSpec("b", 2, 3, 50.0, weight=1.0)]
    torch.testing.assert_close(domain_weight_table(weighted, None), torch.tensor([[0.75, 0.25]] * 4))
    # two experts of one domain share it: w / (2w + M - 2) each
    twins = [TeacherSpec(n, 2, 3, 50.0, domain="speech") for n in ("whisper", "af_whisper")] + [THREE[1]]
    torch.testing.assert_close(domain_weight_table(twins, 10.0)[SPEECH], torch.tensor([10, 10, 1]) / 21)
    five = THREE + [TeacherSpec("x", 2, 3, 50.0), TeacherSpec("y", 2, 3, 50.0, domain="speech")]
    torch.testing.assert_close(domain_weight_table(five, 10.0)[SOUND], torch.tensor([1, 10, 1, 1, 1]) / 14)
    with pytest.raises(ValueError, match="no teacher has a `domain`"):
        domain_weight_table([TeacherSpec("a", 2, 3, 50.0)], 10.0)
    with pytest.raises(ValueError, match="domain_omega"):
        domain_weight_table(THREE, 0.0)
    with pytest.raises(ValueError, match="domain must be one of"):
        DistillObjective(3, 2, [TeacherSpec("a", 2, 3, 50.0, domain="noise")], num_distilled=2)


def batch(rows: int = 3, frames: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    student = [torch.rand(rows, frames, 3, generator=gen) for _ in range(2)]
    targets = {t.name: Targets({tl: torch.rand(rows, frames, 3, generator=gen) for tl in (1, 2)},
                               torch.tensor([frames, frames - 2, frames - 1][:rows])) for t in THREE}
    return student, targets


def test_weighted_total_against_a_hand_computed_sum() -> None:
    objective = DistillObjective(3, 2, THREE, num_distilled=2, domain_omega=10.0)
    identity_heads(objective)
    student, targets = batch()
    lens = torch.tensor([6, 4, 5])
    domains = torch.tensor([SPEECH, MUSIC, -1])  # the last clip's domain is unknown
    out = objective(student, lens, targets, domains=domains)
    weights = {"wavlm": [10 / 12, 1 / 12, 1 / 3], "atst": [1 / 12, 1 / 12, 1 / 3], "muq": [1 / 12, 10 / 12, 1 / 3]}
    expected, frames = 0.0, int(lens.sum())
    for name in weights:
        for tl in (1, 2):  # identity heads: the prediction is the student layer itself
            for b in range(3):
                n = int(lens[b])
                clip = frame_losses(student[tl - 1][b, :n], targets[name].layers[tl][b, :n]).sum()
                expected += weights[name][b] * clip / frames / 2  # 2 distilled layers per teacher
    torch.testing.assert_close(out.total, expected.float())
    # per-head losses and per-clip sums stay unweighted (they are what metrics.csv logs)
    for name in weights:
        for b in range(3):
            n = int(lens[b])
            mean_over_layers = sum(frame_losses(student[tl - 1][b, :n], targets[name].layers[tl][b, :n]).sum() for tl in (1, 2)) / 2
            torch.testing.assert_close(out.clip_losses[name][b], mean_over_layers)
        assert out.clip_frames[name].tolist() == lens.tolist()
    off = DistillObjective(3, 2, THREE, num_distilled=2)
    off.load_state_dict(objective.state_dict())
    unweighted = off(student, lens, targets, domains=domains)
    torch.testing.assert_close(unweighted.total, sum(unweighted.losses.values()) / 6)  # mean over 3 teachers x 2 heads
    assert not torch.allclose(unweighted.total, out.total)


def test_micro_batches_normalised_by_the_step_count_add_up_to_the_whole_step() -> None:
    objective = DistillObjective(3, 2, THREE, num_distilled=2, domain_omega=10.0)
    student, targets = batch(seed=1)
    lens = torch.tensor([6, 4, 5])
    domains = torch.tensor([SOUND, SPEECH, MUSIC])
    whole = objective(student, lens, targets, domains=domains)
    parts = []
    for rows in (slice(0, 1), slice(1, 3)):
        part = {n: Targets({tl: x[rows] for tl, x in t.layers.items()}, t.lengths[rows]) for n, t in targets.items()}
        parts.append(objective([x[rows] for x in student], lens[rows], part, normalizer=whole.counts, domains=domains[rows]))
    torch.testing.assert_close(parts[0].total + parts[1].total, whole.total)
    for key, value in whole.losses.items():
        torch.testing.assert_close(parts[0].losses[key] + parts[1].losses[key], value)


def test_a_faster_teacher_has_its_targets_pooled_to_the_student_rate() -> None:
    objective = DistillObjective(3, 2, [TeacherSpec("wavlm", 2, 3, 50.0)], num_distilled=2, student_rate=25.0)
    identity_heads(objective)
    assert objective.pool == {"wavlm": 1} and objective.target_pool == {"wavlm": 2}
    student = [torch.rand(1, 3, 3) for _ in range(2)]
    target = {tl: torch.rand(1, 7, 3) for tl in (1, 2)}
    out = objective(student, torch.tensor([3]), {"wavlm": Targets(target, torch.tensor([7]))})
    # 7 teacher frames at 50 Hz -> 3 pooled frames (the 7th has no partner) vs 3 student frames at 25 Hz
    pooled = (target[2][0, 0:6:2] + target[2][0, 1:6:2]) / 2
    torch.testing.assert_close(out.losses[("wavlm", 2)], frame_losses(student[1][0], pooled).mean())
    assert int(out.counts["wavlm"]) == 3
    with pytest.raises(ValueError, match="frame_rate"):  # 50 Hz targets of a teacher that says 25 Hz... gap
        objective(student, torch.tensor([3]), {"wavlm": Targets({tl: torch.rand(1, 14, 3) for tl in (1, 2)}, torch.tensor([14]))})
    with pytest.raises(ValueError, match="integer multiples"):
        DistillObjective(3, 2, [TeacherSpec("x", 2, 3, 75.0)], num_distilled=2, student_rate=50.0)


def test_per_teacher_layer_lists() -> None:
    assert resolve_layers(None, 32, "w") is None
    assert resolve_layers("last", 32, "w") == (32,)
    assert resolve_layers([8, 16, 32], 32, "w") == (8, 16, 32)
    for bad in ([0], [33], [16, 8], [4, 4], "first", [], [True]):
        with pytest.raises(ValueError, match="teachers.w.layers"):
            resolve_layers(bad, 32, "w")
    assert explicit_mapping(24, (32,)) == [(24, 32)]  # stage 2: the student's last layer -> the teacher's last
    assert explicit_mapping(12, (4, 8, 12)) == [(4, 4), (8, 8), (12, 12)]
    specs = [TeacherSpec("whisper", 32, 3, 50.0, layers=(32,)), TeacherSpec("wavlm", 12, 3, 50.0)]
    objective = DistillObjective(3, 4, specs, num_distilled=2)
    assert objective.mapping == {"whisper": [(4, 32)], "wavlm": [(2, 6), (4, 12)]}
    assert sorted(objective.heads["whisper"]) == ["32"]
