"""Sparse layer-to-layer distillation objective (USAD paper, section 4 of SPEC.md).

Student layer floor(k*L_S/K) predicts teacher layer floor(k*L_T/K), k = 1..K, through one
Linear -> ReLU -> Linear head per (teacher, layer). Per valid frame the loss is
(1/D) * ||z_hat - z||_1 - log sigmoid(cos(z_hat, z)); predictions for a slower teacher are
mean-pooled to its rate first. Head hidden width defaults to the teacher's dimension (the paper
does not state it; teacher dim keeps the head small next to the encoder: 2 x 768^2 weights for Base).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..teachers.base import TeacherOutput

# Student and teacher frame counts of one item may differ by this much (edge frames of the two
# frontends) before a mismatch is treated as a wrong frame rate or a broken teacher.
MAX_LENGTH_MISMATCH = 2


def layer_mapping(student_layers: int, teacher_layers: int, num_distilled: int = 4) -> list[tuple[int, int]]:
    """1-based (student layer, teacher layer) pairs: floor(k*L_S/K) -> floor(k*L_T/K), k = 1..K."""
    if num_distilled < 1:
        raise ValueError(f"number of distilled layers K must be >= 1, got {num_distilled}")
    if num_distilled > min(student_layers, teacher_layers):
        raise ValueError(
            f"K={num_distilled} distilled layers needs at least K layers in student ({student_layers}) "
            f"and teacher ({teacher_layers})"
        )
    return [(k * student_layers // num_distilled, k * teacher_layers // num_distilled) for k in range(1, num_distilled + 1)]


def frame_losses(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[..., D] x [..., D] -> [...]: mean absolute error minus log sigmoid of cosine similarity (fp32)."""
    pred, target = pred.float(), target.float()
    l1 = (pred - target).abs().mean(dim=-1)
    cos = F.cosine_similarity(pred, target, dim=-1, eps=1e-8)
    return l1 - F.logsigmoid(cos)


def mean_pool(x: torch.Tensor, lengths: torch.Tensor, kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping mean pooling in time ([B, T, D] -> [B, T//kernel, D]); a trailing partial
    window is dropped, so each item keeps lengths//kernel frames made only of its own frames."""
    if kernel == 1:
        return x, lengths
    b, t, d = x.shape
    t_out = t // kernel
    pooled = x[:, : t_out * kernel].reshape(b, t_out, kernel, d).mean(dim=2)
    return pooled, torch.div(lengths, kernel, rounding_mode="floor")


@dataclass(frozen=True)
class TeacherSpec:
    """What the objective needs to know about one teacher."""

    name: str
    num_layers: int
    dim: int
    frame_rate: float
    weight: float = 1.0


@dataclass
class Targets:
    """The distilled layers of one teacher for one batch: {teacher layer (1-based): [B, T, D]}."""

    layers: dict[int, torch.Tensor]
    lengths: torch.Tensor


@dataclass
class ObjectiveOutput:
    """`total` is the training loss; `losses[(teacher, layer)]` the per-head means it averages;
    `counts[teacher]` the valid frames that entered this item's sums (local to this process)."""

    total: torch.Tensor
    losses: dict[tuple[str, int], torch.Tensor]
    counts: dict[str, torch.Tensor]


def _head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class DistillObjective(nn.Module):
    """Prediction heads + loss for any number of teachers at any integer rate ratio."""

    def __init__(
        self,
        student_dim: int,
        student_layers: int,
        teachers: Sequence[TeacherSpec],
        num_distilled: int = 4,
        head_hidden: "int | None" = None,
        student_rate: float = 50.0,
    ) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("distillation needs at least one teacher")
        names = [t.name for t in teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        self.teachers = {t.name: t for t in teachers}
        self.student_layers = student_layers
        self.mapping = {t.name: layer_mapping(student_layers, t.num_layers, num_distilled) for t in teachers}
        self.pool = {t.name: self._rate_ratio(student_rate, t) for t in teachers}
        for t in teachers:
            if not (t.weight >= 0 and math.isfinite(t.weight)):
                raise ValueError(f"teacher {t.name!r}: weight must be a finite number >= 0, got {t.weight}")
        if sum(t.weight for t in teachers) <= 0:
            raise ValueError("at least one teacher needs a weight > 0")
        self.heads = nn.ModuleDict(
            {
                t.name: nn.ModuleDict(
                    {str(tl): _head(student_dim, head_hidden or t.dim, t.dim) for _, tl in self.mapping[t.name]}
                )
                for t in teachers
            }
        )

    @staticmethod
    def _rate_ratio(student_rate: float, teacher: TeacherSpec) -> int:
        ratio = student_rate / teacher.frame_rate
        if ratio < 1 - 1e-6 or abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(
                f"teacher {teacher.name!r} runs at {teacher.frame_rate} Hz; the student ({student_rate} Hz) "
                f"must be an integer multiple of it (e.g. 50 or 25 Hz)"
            )
        return int(round(ratio))

    def teacher_layers(self, name: str) -> list[int]:
        """The teacher layers (1-based) distilled from teacher `name`."""
        return [tl for _, tl in self.mapping[name]]

    def targets_from(self, name: str, output: TeacherOutput) -> Targets:
        """Keep the distilled layers of a full TeacherOutput, checking it matches the spec."""
        spec = self.teachers[name]
        if len(output.layers) != spec.num_layers:
            raise ValueError(f"teacher {name!r} returned {len(output.layers)} layers, expected {spec.num_layers}")
        if abs(output.frame_rate - spec.frame_rate) > 1e-6:
            raise ValueError(f"teacher {name!r} returned {output.frame_rate} Hz features, expected {spec.frame_rate} Hz")
        # a copy turns inference-mode tensors (teacher outputs) into ones autograd may save; fp32
        # whatever precision the teacher ran in, so the loss compares against the same targets
        layers = {tl: output.layers[tl - 1].to(torch.float32, copy=True) for tl in self.teacher_layers(name)}
        for tl, x in layers.items():
            if x.shape[-1] != spec.dim:
                raise ValueError(f"teacher {name!r} layer {tl}: feature dim {x.shape[-1]}, expected {spec.dim}")
        return Targets(layers=layers, lengths=output.lengths)

    def valid_lengths(self, name: str, student_lengths: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Frames per item that enter the loss: pooled student frames and teacher frames, trimmed
        to the shorter; more than MAX_LENGTH_MISMATCH frames apart means a rate or length bug."""
        pooled = torch.div(student_lengths, self.pool[name], rounding_mode="floor")
        teacher = targets.lengths.to(pooled.device)
        gap = int((pooled - teacher).abs().max())
        if gap > MAX_LENGTH_MISMATCH:
            raise ValueError(
                f"teacher {name!r}: {teacher.tolist()} frames vs {pooled.tolist()} pooled student frames; "
                f"a gap of {gap} frames means the teacher's frame_rate ({self.teachers[name].frame_rate} Hz) is wrong"
            )
        return torch.minimum(pooled, teacher)

    def frame_counts(self, student_lengths: torch.Tensor, targets: Mapping[str, Targets]) -> dict[str, torch.Tensor]:
        """Valid frames per teacher; the trainer sums these over micro-batches and ranks."""
        return {name: self.valid_lengths(name, student_lengths, targets[name]).sum() for name in self.teachers}

    def forward(
        self,
        student_layers: Sequence[torch.Tensor],
        student_lengths: torch.Tensor,
        targets: Mapping[str, Targets],
        normalizer: "Mapping[str, torch.Tensor | float] | None" = None,
    ) -> ObjectiveOutput:
        """student_layers: one [B, T, D] per student layer (1..L_S). Losses are frame sums divided by
        `normalizer[teacher]` (default: this batch's valid frames), so sums over micro-batches and
        ranks normalised by their global frame count equal one big batch exactly."""
        if len(student_layers) != self.student_layers:
            raise ValueError(f"got {len(student_layers)} student layers, the objective was built for {self.student_layers}")
        missing = sorted(set(self.teachers) - set(targets))
        if missing:
            raise ValueError(f"no targets for teacher(s) {missing}")
        total_weight = sum(t.weight for t in self.teachers.values())
        total = student_layers[0].new_zeros((), dtype=torch.float32)
        losses: dict[tuple[str, int], torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        for name, spec in self.teachers.items():
            tgt = targets[name]
            valid = self.valid_lengths(name, student_lengths, tgt)
            counts[name] = valid.sum()
            denom = normalizer[name] if normalizer is not None else counts[name]
            denom = torch.as_tensor(denom, dtype=torch.float32, device=total.device).clamp(min=1.0)
            per_teacher = total.new_zeros(())
            for sl, tl in self.mapping[name]:
                pred = self.heads[name][str(tl)](student_layers[sl - 1])
                pred, _ = mean_pool(pred, student_lengths, self.pool[name])
                target = tgt.layers[tl]
                t = min(pred.shape[1], target.shape[1])
                mask = torch.arange(t, device=pred.device)[None, :] < valid[:, None]
                frame = frame_losses(pred[:, :t], target[:, :t].to(pred.device))
                losses[(name, tl)] = frame.masked_fill(~mask, 0.0).sum() / denom
                per_teacher = per_teacher + losses[(name, tl)]
            total = total + (spec.weight / total_weight) * per_teacher / len(self.mapping[name])
        return ObjectiveOutput(total=total, losses=losses, counts=counts)
