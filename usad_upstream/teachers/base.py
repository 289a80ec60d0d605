"""The teacher interface: a frozen model that maps a padded 16 kHz batch to per-layer targets."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TeacherOutput:
    """Per-layer targets. `layers[i]` is layer i+1 ([B, T, D]); frames past `lengths` are padding."""

    layers: list[torch.Tensor]
    lengths: torch.Tensor
    frame_rate: float


class Teacher(nn.Module):
    """Frozen, eval-mode, inference-only feature extractor used as a distillation target.

    Subclasses set `frame_rate` (Hz), `num_layers` and `dim`, and implement `extract`.
    """

    frame_rate: float
    num_layers: int
    dim: int

    def freeze(self) -> "Teacher":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Teacher":
        """Teachers stay in eval mode whatever the trainer asks (no dropout in targets)."""
        return super().train(False)

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        raise NotImplementedError

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        with torch.inference_mode():
            return self.extract(wavs, wav_lens)
