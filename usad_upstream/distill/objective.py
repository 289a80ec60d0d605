"""Sparse layer-to-layer distillation objective (USAD paper, section 4 of SPEC.md; USAD 2.0).

Student layer floor(k*L_S/K) predicts teacher layer floor(k*L_T/K), k = 1..K, through one
Linear -> ReLU -> Linear head per (teacher, layer); a teacher may instead name its own layers
(`layers: [l_1, ..., l_K]` or `last`), predicted by student layers floor(k*L_S/K) in that order.
Per valid frame the loss is (1/D) * ||z_hat - z||_1 - log sigmoid(cos(z_hat, z)). Rates: the
faster side is mean-pooled to the slower one's rate (non-overlapping windows of the integer
ratio), so a 50 Hz student's predictions are pooled for a 25 Hz teacher (the paper's rule) and a
50 Hz teacher's targets (WavLM, Whisper) are pooled for a 25 Hz student (USAD 2.0's XLarge; the
paper does not say how; pooling the targets keeps both sides at the student's 40 ms frames and
is the same rule seen from the other side). Head hidden width defaults to the teacher's dimension
(the paper does not state it; teacher dim keeps the head small next to the encoder).

Weighting (USAD 2.0 domain-aware weighting). Each clip b of a step gives each teacher t a weight
a[b, t], summing to 1 over teachers: proportional to weight_t (the teacher's `weight`, default 1)
times omega if t is the expert of b's domain (`domain`), else times 1. With M teachers of weight 1
and one expert per domain this is the paper's w/(w+M-1) and 1/(w+M-1); a clip of a domain no
teacher claims, or `domain_omega` null, gives every teacher weight_t / sum(weight) (today's
weighting). The training loss is

    total = sum_t (1/K_t) sum_layers [ sum_b a[b, t] * (sum of b's valid frame losses) ] / N_t

where N_t is the number of valid teacher-t frames in the WHOLE step (all micro-batches and ranks;
the trainer counts them before the student runs). So the weights scale frames inside the sum while
the divisor stays the unweighted frame count: micro-batch and rank sums still add up to one big
batch exactly, and a step made only of speech clips still puts 10/12 of the loss on the speech
teacher (a weighted divisor would cancel the weights in such a step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..teachers.base import TeacherOutput
from .data import DOMAINS

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


def explicit_mapping(student_layers: int, teacher_layers: Sequence[int]) -> list[tuple[int, int]]:
    """1-based (student layer, teacher layer) pairs for a teacher's own layer list: the k-th listed
    layer is predicted by student layer floor(k*L_S/K) (K = len(list); `[L_T]` -> the last layers)."""
    count = len(teacher_layers)
    if count > student_layers:
        raise ValueError(f"{count} teacher layers need at least as many student layers, the student has {student_layers}")
    return [(k * student_layers // count, tl) for k, tl in enumerate(teacher_layers, start=1)]


def resolve_layers(value: object, num_layers: int, teacher: str) -> "tuple[int, ...] | None":
    """A teacher's `layers` field -> 1-based layer indices (None: the K-sparse mapping).
    Accepts null, `last`, one index or a list of strictly increasing indices in 1..num_layers."""
    if value is None:
        return None
    items = [num_layers] if value == "last" else value if isinstance(value, (list, tuple)) else [value]
    if (not items or any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= num_layers for i in items)
            or list(items) != sorted(set(items))):
        raise ValueError(
            f"teachers.{teacher}.layers must be `last`, a layer index or a list of increasing layer indices "
            f"in 1..{num_layers} (the teacher's depth), got {value!r}"
        )
    return tuple(items)


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
    domain: "str | None" = None  # the domain this teacher is the expert of (speech, sound, music)
    layers: "tuple[int, ...] | None" = None  # teacher layers to distil (1-based); None: the K-sparse mapping


@dataclass
class Targets:
    """The distilled layers of one teacher for one batch: {teacher layer (1-based): [B, T, D]}."""

    layers: dict[int, torch.Tensor]
    lengths: torch.Tensor


@dataclass
class ObjectiveOutput:
    """`total` is the training loss; `losses[(teacher, layer)]` each head's unweighted mean frame
    loss (frame sums over the normaliser); `counts[teacher]` the valid frames that entered this
    item's sums (local to this process); `clip_losses[teacher]` ([B], detached) each clip's frame
    loss sum averaged over the teacher's layers and `clip_frames[teacher]` ([B]) its valid frames,
    for per-domain logging."""

    total: torch.Tensor
    losses: dict[tuple[str, int], torch.Tensor]
    counts: dict[str, torch.Tensor]
    clip_losses: dict[str, torch.Tensor]
    clip_frames: dict[str, torch.Tensor]


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
        domain_omega: "float | None" = None,
    ) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("distillation needs at least one teacher")
        names = [t.name for t in teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        self.teachers = {t.name: t for t in teachers}
        self.student_layers = student_layers
        self.mapping = {
            t.name: explicit_mapping(student_layers, t.layers) if t.layers else layer_mapping(student_layers, t.num_layers, num_distilled)
            for t in teachers
        }
        ratios = {t.name: self._rate_ratio(student_rate, t) for t in teachers}
        self.pool = {name: s for name, (s, _) in ratios.items()}  # student predictions pooled by this
        self.target_pool = {name: p for name, (_, p) in ratios.items()}  # teacher targets pooled by this
        for t in teachers:
            if not (t.weight >= 0 and math.isfinite(t.weight)):
                raise ValueError(f"teacher {t.name!r}: weight must be a finite number >= 0, got {t.weight}")
            if t.domain is not None and t.domain not in DOMAINS:
                raise ValueError(f"teacher {t.name!r}: domain must be one of {list(DOMAINS)}, got {t.domain!r}")
        if sum(t.weight for t in teachers) <= 0:
            raise ValueError("at least one teacher needs a weight > 0")
        self.register_buffer("weight_table", domain_weight_table(teachers, domain_omega), persistent=False)
        self.heads = nn.ModuleDict(
            {
                t.name: nn.ModuleDict(
                    {str(tl): _head(student_dim, head_hidden or t.dim, t.dim) for _, tl in self.mapping[t.name]}
                )
                for t in teachers
            }
        )

    @staticmethod
    def _rate_ratio(student_rate: float, teacher: TeacherSpec) -> tuple[int, int]:
        """(student pooling, target pooling): the faster side is pooled by the integer rate ratio."""
        for ratio, pools in ((student_rate / teacher.frame_rate, lambda r: (r, 1)),
                             (teacher.frame_rate / student_rate, lambda r: (1, r))):
            if ratio > 1 - 1e-6 and abs(ratio - round(ratio)) <= 1e-6:
                return pools(int(round(ratio)))
        raise ValueError(
            f"teacher {teacher.name!r} runs at {teacher.frame_rate} Hz; it and the student ({student_rate} Hz) "
            f"must be integer multiples of one another (e.g. 50 and 25 Hz)"
        )

    def clip_weights(self, domains: "torch.Tensor | None", batch: int) -> torch.Tensor:
        """[B, M] loss weights of each clip's teachers (columns in teacher order; rows sum to 1).
        `domains`: each clip's index into DOMAINS, -1 (or None for all) when unknown."""
        table = self.weight_table
        if domains is None:
            return table[-1].expand(batch, -1)
        domains = domains.to(table.device).long()
        return table[torch.where(domains < 0, len(DOMAINS), domains)]

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
        """Frames per item that enter the loss: pooled student frames and (pooled) teacher frames,
        trimmed to the shorter; more than MAX_LENGTH_MISMATCH frames apart means a rate or length bug."""
        pooled = torch.div(student_lengths, self.pool[name], rounding_mode="floor")
        teacher = torch.div(targets.lengths.to(pooled.device), self.target_pool[name], rounding_mode="floor")
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
        domains: "torch.Tensor | None" = None,
    ) -> ObjectiveOutput:
        """student_layers: one [B, T, D] per student layer (1..L_S); domains: [B] indices into
        DOMAINS (-1 or None: unknown). Losses are frame sums divided by `normalizer[teacher]`
        (default: this batch's valid frames), so sums over micro-batches and ranks normalised by
        their global frame count equal one big batch exactly (module docstring: the weighting)."""
        if len(student_layers) != self.student_layers:
            raise ValueError(f"got {len(student_layers)} student layers, the objective was built for {self.student_layers}")
        missing = sorted(set(self.teachers) - set(targets))
        if missing:
            raise ValueError(f"no targets for teacher(s) {missing}")
        total = student_layers[0].new_zeros((), dtype=torch.float32)
        weights = self.clip_weights(domains, student_lengths.shape[0]).to(total.device)
        losses: dict[tuple[str, int], torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        clip_losses: dict[str, torch.Tensor] = {}
        clip_frames: dict[str, torch.Tensor] = {}
        for j, name in enumerate(self.teachers):
            tgt = targets[name]
            valid = self.valid_lengths(name, student_lengths, tgt)
            counts[name], clip_frames[name] = valid.sum(), valid
            denom = normalizer[name] if normalizer is not None else counts[name]
            denom = torch.as_tensor(denom, dtype=torch.float32, device=total.device).clamp(min=1.0)
            per_clip = total.new_zeros(student_lengths.shape[0])
            for sl, tl in self.mapping[name]:
                pred = self.heads[name][str(tl)](student_layers[sl - 1])
                pred, _ = mean_pool(pred, student_lengths, self.pool[name])
                target, _ = mean_pool(tgt.layers[tl].to(pred.device), tgt.lengths.to(pred.device), self.target_pool[name])
                t = min(pred.shape[1], target.shape[1])
                mask = torch.arange(t, device=pred.device)[None, :] < valid[:, None]
                frame = frame_losses(pred[:, :t], target[:, :t]).masked_fill(~mask, 0.0)
                clip_sums = frame.sum(dim=1)
                losses[(name, tl)] = clip_sums.sum() / denom
                per_clip = per_clip + clip_sums
            per_clip = per_clip / len(self.mapping[name])
            total = total + (weights[:, j] * per_clip).sum() / denom
            clip_losses[name] = per_clip.detach()
        return ObjectiveOutput(total=total, losses=losses, counts=counts, clip_losses=clip_losses, clip_frames=clip_frames)


def domain_weight_table(teachers: Sequence[TeacherSpec], omega: "float | None") -> torch.Tensor:
    """[len(DOMAINS) + 1, M]: row d holds the teachers' loss weights for a clip of domain DOMAINS[d],
    the last row those of a clip of unknown domain. Entry (d, t) is weight_t * c / sum_u weight_u * c_u
    with c = omega where teacher t is the expert of d, else 1 (omega null: c = 1 everywhere)."""
    if omega is not None and not (isinstance(omega, (int, float)) and not isinstance(omega, bool) and 0 < omega < math.inf):
        raise ValueError(f"objective.domain_omega must be null or a number > 0, got {omega!r}")
    if omega is not None and not any(t.domain for t in teachers):
        raise ValueError("objective.domain_omega is set but no teacher has a `domain` (teachers.NAME.domain=speech|sound|music)")
    rows = []
    for domain in (*DOMAINS, None):
        scale = [float(omega) if omega is not None and domain is not None and t.domain == domain else 1.0 for t in teachers]
        raw = [t.weight * c for t, c in zip(teachers, scale)]
        rows.append([r / sum(raw) for r in raw])
    return torch.tensor(rows, dtype=torch.float64).float()
