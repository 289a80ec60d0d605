"""A USAD student checkpoint of this project as a teacher (e.g. to distil a smaller student)."""
from __future__ import annotations

import torch

from ..model import UsadModel
from .base import Teacher, TeacherOutput, check_target


class UsadTeacher(Teacher):
    """Per-layer FFN outputs (default) or hidden states of a USAD student, 50 Hz."""

    def __init__(self, model: UsadModel, target: str = "ffn") -> None:
        super().__init__()
        self.target = check_target(target)
        self.model = model
        self.frame_rate = 16000 / model.downsample_rate
        self.num_layers = model.config.layers
        self.dim = model.config.dim
        self.freeze()

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        out = self.model(wavs, wav_lens)
        return TeacherOutput(layers=list(out[self.target]), lengths=out["lengths"], frame_rate=self.frame_rate)
