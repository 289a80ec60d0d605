"""Any teacher, or several side by side, as one frozen feature extractor for evaluation.

The same spec file drives the s3prl upstream `usad_teacher` (`-u usad_teacher -k SPEC`) and the
HEAR module `hear_api.teacher` (`--model SPEC`), so teachers, their concatenation (the paper's
"WavLM+ATST" baseline) and baselines such as fbank go through exactly the recipes the student
goes through. A spec file (YAML or JSON) holds one teacher spec or a list under `teachers`:

    teachers:
      - {kind: wavlm, path: speech_teacher.pt}
      - {kind: atst_frame, path: audio_teacher.ckpt}
    frame_rate: 50          # optional; default: the fastest teacher's rate

Relative paths are relative to the spec file. `target` defaults to `hidden_states` (each layer's
output: what downstream probes read), not the FFN targets that distillation uses.

Alignment: every teacher is brought to the common frame rate by an integer factor: a slower
teacher's frames are repeated (25 Hz ATST-Frame tokens become two 50 Hz frames), a faster one's
are mean-pooled over its valid frames (100 Hz fbank becomes 50 Hz, as USAD pools for its 25 Hz
teacher). Items are cut to the shortest teacher, and layer i of the stack (1..L, L = the deepest
teacher's depth) concatenates, on the feature axis, layer ceil(i * L_k / L) of each teacher k.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..frontend import check_waveforms
from . import build_teacher
from .base import Teacher, TeacherOutput, frame_mask

SPEC_FIELDS = {"teachers", "frame_rate"}


def read_stack_spec(path: "str | os.PathLike[str]") -> dict[str, Any]:
    """Parse a spec file into {"teachers": [spec, ...], "frame_rate": float | None} with paths
    made absolute; raises ValueError naming the file and the problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"teacher spec file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML/JSON ({exc})") from None
    if isinstance(data, Mapping) and "kind" in data:
        data = {"teachers": [data]}
    if not isinstance(data, Mapping) or not isinstance(data.get("teachers"), list) or not data["teachers"]:
        raise ValueError(f"{path}: expected a teacher spec (with 'kind') or a mapping with a non-empty list 'teachers'")
    extra = set(data) - SPEC_FIELDS
    if extra:
        raise ValueError(f"{path}: unknown fields {sorted(extra)}; allowed: {sorted(SPEC_FIELDS)}")
    teachers = []
    for i, spec in enumerate(data["teachers"]):
        if not isinstance(spec, Mapping) or "kind" not in spec:
            raise ValueError(f"{path}: teachers[{i}] must be a mapping with 'kind'")
        spec = dict(spec)
        spec.setdefault("target", "hidden_states")
        for key in ("path", "ckpt"):
            value = spec.get(key)
            if value and not Path(value).is_absolute() and "://" not in str(value):
                spec[key] = str((path.parent / value).resolve())
        teachers.append(spec)
    rate = data.get("frame_rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0):
        raise ValueError(f"{path}: frame_rate must be a positive number, got {rate!r}")
    return {"teachers": teachers, "frame_rate": None if rate is None else float(rate)}


class TeacherStack(nn.Module):
    """Frozen teachers side by side: [B, N] waveforms -> per-layer [B, T, sum of dims] at one rate."""

    def __init__(self, teachers: list[Teacher], frame_rate: "float | None" = None) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("a teacher stack needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.frame_rate = float(frame_rate or max(t.frame_rate for t in teachers))
        self.repeats, self.pools = [], []
        for t in teachers:
            up, down = self.frame_rate / t.frame_rate, t.frame_rate / self.frame_rate
            if abs(up - round(up)) < 1e-6 and round(up) >= 1:
                self.repeats.append(int(round(up)))
                self.pools.append(1)
            elif abs(down - round(down)) < 1e-6:
                self.repeats.append(1)
                self.pools.append(int(round(down)))
            else:
                raise ValueError(
                    f"teacher {type(t).__name__} runs at {t.frame_rate} Hz, which is not an integer multiple or "
                    f"divisor of the stack's {self.frame_rate} Hz; choose a frame_rate every teacher's rate divides "
                    f"or is divided by"
                )
        self.num_layers = max(t.num_layers for t in teachers)
        self.dim = sum(t.dim for t in teachers)
        self.layer_map = [[math.ceil(i * t.num_layers / self.num_layers) for t in teachers] for i in range(1, self.num_layers + 1)]
        self.eval()

    @property
    def downsample_rate(self) -> int:
        """Samples per output frame (16 kHz input)."""
        return int(round(16000 / self.frame_rate))

    def train(self, mode: bool = True) -> "TeacherStack":
        return super().train(False)

    def forward(self, wavs: torch.Tensor, wav_lens: "torch.Tensor | None" = None) -> TeacherOutput:
        lens = check_waveforms(wavs, wav_lens)
        outs = [t(wavs, lens) for t in self.teachers]
        # ceil(frames * repeat / pool): a pooled teacher keeps its partial last window
        lengths = torch.stack([-(-o.lengths * r // p) for o, r, p in zip(outs, self.repeats, self.pools)]).min(dim=0).values
        t_max = int(lengths.max())
        layers = []
        for picks in self.layer_map:
            parts = []
            for out, r, p, k in zip(outs, self.repeats, self.pools, picks):
                x = out.layers[k - 1]
                if r > 1:
                    x = x.repeat_interleave(r, dim=1)
                if p > 1:
                    x = pool_valid_frames(x, out.lengths, p)
                if x.shape[1] < t_max:
                    x = nn.functional.pad(x, (0, 0, 0, t_max - x.shape[1]))
                parts.append(x[:, :t_max])
            layers.append(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])
        valid = frame_mask(lengths, t_max)[..., None]
        return TeacherOutput(layers=[x.masked_fill(~valid, 0.0) for x in layers], lengths=lengths, frame_rate=self.frame_rate)


def pool_valid_frames(x: torch.Tensor, lengths: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, T, D] -> [B, ceil(T / factor), D]: each output frame is the mean of the valid input
    frames it covers, so padding never leaks into an item's last frame. Unlike the distillation
    loss's `objective.mean_pool` (the paper's alignment, which drops a partial window), the partial
    last window is kept: an evaluation's timestamps must cover the whole clip."""
    valid = frame_mask(lengths, x.shape[1]).to(x.dtype)[..., None]
    pad = -x.shape[1] % factor
    x = nn.functional.pad(x * valid, (0, 0, 0, pad))
    valid = nn.functional.pad(valid, (0, 0, 0, pad))
    sums = x.unflatten(1, (-1, factor)).sum(2)
    return sums / valid.unflatten(1, (-1, factor)).sum(2).clamp(min=1.0)


def load_teacher_stack(path: "str | os.PathLike[str]") -> TeacherStack:
    """Build the (frozen, eval-mode) stack a spec file describes."""
    spec = read_stack_spec(path)
    return TeacherStack([build_teacher(s) for s in spec["teachers"]], spec["frame_rate"])
