"""A USAD model as a teacher (e.g. to distil a smaller student): one of this project's students,
an export, or an official release run through its own code (usad_upstream.release)."""
from __future__ import annotations

import torch
from torch import nn

from .base import Teacher, TeacherOutput, check_target


class UsadTeacher(Teacher):
    """Per-layer FFN outputs (default) or hidden states of a USAD encoder, at its frame rate
    (50 Hz, or 25 Hz for USAD 2.0's XLarge models)."""

    def __init__(self, model: nn.Module, target: str = "ffn") -> None:
        super().__init__()
        self.target = check_target(target)
        self.model = model
        self.frame_rate = 16000 / model.downsample_rate
        self.num_layers = model.config.layers
        self.dim = model.config.dim
        self.freeze()

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        out = self.model(wavs, wav_lens)
        if self.target not in out:
            raise ValueError(f"this USAD model gives no {self.target!r} outputs; use target: hidden_states")
        return TeacherOutput(layers=list(out[self.target]), lengths=out["lengths"], frame_rate=self.frame_rate)
