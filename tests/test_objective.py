"""The distillation objective: layer mapping, per-frame loss, rate pooling, trimming, masks, weights."""
import math

import pytest
import torch
from torch import nn

from usad_upstream.distill.objective import (
    DistillObjective,
    Targets,
    TeacherSpec,
    frame_losses,
    layer_mapping,
    mean_pool,
)


def test_layer_mapping_matches_the_paper():
    assert layer_mapping(12, 12) == [(3, 3), (6, 6), (9, 9), (12, 12)]  # Small and Base
    assert layer_mapping(24, 12) == [(6, 3), (12, 6), (18, 9), (24, 12)]  # Large
    assert layer_mapping(2, 4, 2) == [(1, 2), (2, 4)]
    assert layer_mapping(10, 7, 3) == [(3, 2), (6, 4), (10, 7)]  # floor(k*L/K) for any depths
    with pytest.raises(ValueError, match="at least K layers"):
        layer_mapping(2, 12, 4)


def test_frame_loss_against_hand_computed_values():
    pred = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    target = torch.tensor([[0.0, 1.0], [3.0, 4.0], [-1.0, -1.0]])
    expected = torch.tensor([
        1.0 + math.log(2.0),  # L1 mean 1, cos 0: -log sigmoid(0) = log 2
        math.log(1 + math.exp(-1.0)),  # identical: L1 0, cos 1
        2.0 + math.log(1 + math.exp(1.0)),  # opposite: L1 mean 2, cos -1
    ])
    torch.testing.assert_close(frame_losses(pred, target), expected)


def identity_heads(objective: DistillObjective) -> None:
    """Make every head the identity on non-negative inputs, so losses can be computed by hand."""
    for heads in objective.heads.values():
        for head in heads.values():
            for layer in (head[0], head[2]):
                nn.init.eye_(layer.weight)
                nn.init.zeros_(layer.bias)


def make(teachers, student_layers=2, k=2, dim=3):
    obj = DistillObjective(dim, student_layers, teachers, num_distilled=k)
    identity_heads(obj)
    return obj


def test_25hz_teacher_gets_mean_pooled_predictions():
    obj = make([TeacherSpec("audio", 2, 3, 25.0)])
    s1 = torch.rand(1, 5, 3)
    s2 = torch.rand(1, 5, 3)
    tgt = {1: torch.rand(1, 2, 3), 2: torch.rand(1, 2, 3)}
    out = obj([s1, s2], torch.tensor([5]), {"audio": Targets(tgt, torch.tensor([2]))})
    # 5 student frames -> 2 pooled frames (the 5th has no partner) vs 2 teacher frames
    pooled2 = torch.stack([(s2[0, 0] + s2[0, 1]) / 2, (s2[0, 2] + s2[0, 3]) / 2])
    expected = frame_losses(pooled2, tgt[2][0]).mean()
    torch.testing.assert_close(out.losses[("audio", 2)], expected)
    x, lens = mean_pool(torch.arange(12.0).reshape(1, 6, 2), torch.tensor([5]), 2)
    assert lens.tolist() == [2] and x[0, 0].tolist() == [1.0, 2.0]


def test_off_by_one_lengths_are_trimmed_and_big_gaps_refused():
    obj = make([TeacherSpec("speech", 2, 3, 50.0)])
    s = [torch.rand(1, 4, 3), torch.rand(1, 4, 3)]
    tgt = {1: torch.rand(1, 5, 3), 2: torch.rand(1, 5, 3)}
    out = obj(s, torch.tensor([4]), {"speech": Targets(tgt, torch.tensor([5]))})
    torch.testing.assert_close(out.losses[("speech", 2)], frame_losses(s[1][0], tgt[2][0, :4]).mean())
    assert int(out.counts["speech"]) == 4
    long = {1: torch.rand(1, 9, 3), 2: torch.rand(1, 9, 3)}
    with pytest.raises(ValueError, match="frame_rate"):
        obj(s, torch.tensor([4]), {"speech": Targets(long, torch.tensor([9]))})


def test_padding_is_excluded():
    obj = make([TeacherSpec("speech", 2, 3, 50.0)])
    a = [torch.rand(1, 6, 3) for _ in range(2)]
    b = [torch.rand(1, 3, 3) for _ in range(2)]
    ta = {1: torch.rand(1, 6, 3), 2: torch.rand(1, 6, 3)}
    tb = {1: torch.rand(1, 3, 3), 2: torch.rand(1, 3, 3)}

    def padded(x, y, fill):
        return torch.cat([x, torch.cat([y, torch.full((1, 3, 3), fill)], dim=1)])

    lens = torch.tensor([6, 3])
    losses = []
    for fill in (0.0, 1e3):  # garbage in the padding must not matter
        s = [padded(a[i], b[i], fill) for i in range(2)]
        t = {tl: padded(ta[tl], tb[tl], -fill) for tl in (1, 2)}
        losses.append(obj(s, lens, {"speech": Targets(t, lens)}).total)
    expected = sum(
        (frame_losses(a[i][0], ta[i + 1][0]).sum() + frame_losses(b[i][0], tb[i + 1][0]).sum()) / 9 for i in range(2)
    ) / 2
    torch.testing.assert_close(losses[0], expected)
    torch.testing.assert_close(losses[1], expected)


def test_per_teacher_weights_and_global_normaliser():
    specs = [TeacherSpec("speech", 2, 3, 50.0, weight=3.0), TeacherSpec("audio", 2, 3, 25.0, weight=1.0)]
    obj = make(specs)
    s = [torch.rand(2, 8, 3) for _ in range(2)]
    lens = torch.tensor([8, 6])
    targets = {
        "speech": Targets({1: torch.rand(2, 8, 3), 2: torch.rand(2, 8, 3)}, lens),
        "audio": Targets({1: torch.rand(2, 4, 3), 2: torch.rand(2, 4, 3)}, lens // 2),
    }
    out = obj(s, lens, targets)
    per_teacher = {n: (out.losses[(n, 1)] + out.losses[(n, 2)]) / 2 for n in ("speech", "audio")}
    torch.testing.assert_close(out.total, (3 * per_teacher["speech"] + per_teacher["audio"]) / 4)
    # two halves normalised by the frame count of the whole batch add up to the whole batch
    halves = []
    for rows in (slice(0, 1), slice(1, 2)):
        part = {n: Targets({tl: x[rows] for tl, x in t.layers.items()}, t.lengths[rows]) for n, t in targets.items()}
        halves.append(obj([x[rows] for x in s], lens[rows], part, normalizer=out.counts).total)
    torch.testing.assert_close(halves[0] + halves[1], out.total)


def test_rate_and_weight_errors():
    with pytest.raises(ValueError, match="integer multiple"):
        DistillObjective(3, 2, [TeacherSpec("x", 2, 3, 30.0)], num_distilled=2)
    with pytest.raises(ValueError, match="weight"):
        DistillObjective(3, 2, [TeacherSpec("x", 2, 3, 50.0, weight=0.0)], num_distilled=2)
    heads = DistillObjective(8, 4, [TeacherSpec("x", 4, 5, 50.0)], num_distilled=2, head_hidden=7).heads["x"]
    assert sorted(heads) == ["2", "4"] and heads["4"][0].out_features == 7 and heads["4"][2].out_features == 5
