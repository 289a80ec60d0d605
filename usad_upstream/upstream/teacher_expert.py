"""Teachers (one, or several concatenated) as an s3prl upstream: `-u usad_teacher -k SPEC`.

SPEC is a teacher spec file (usad_upstream/teachers/stack.py): e.g. a small WavLM checkpoint, an
ATST-Frame checkpoint, both side by side, or `{kind: s3prl, name: fbank}`. This is how the demo
evaluates the teachers and their concatenation through the same s3prl recipes as the student.
hidden_states are the stack's layers (1..L) at its common frame rate; last_hidden_state is the last.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from ..compat import patch_s3prl
from ..teachers.stack import load_teacher_stack
from .expert import UsadUpstreamError, feature_cache

patch_s3prl()

from s3prl.upstream.interfaces import UpstreamBase  # noqa: E402  (needs the patch above)


class TeacherUpstreamExpert(UpstreamBase):
    """s3prl upstream over a TeacherStack: list of 1-D 16 kHz waveforms in, per-layer features out."""

    def __init__(self, ckpt: str, model_config: "str | None" = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if model_config:
            raise UsadUpstreamError(f"usad_teacher upstream: -g/model_config ({model_config}) is not used; the spec file says it all")
        try:
            self.stack = load_teacher_stack(ckpt)
        except ValueError as exc:
            raise UsadUpstreamError(f"usad_teacher upstream: {exc}") from None
        self.cache = feature_cache()

    def get_downsample_rates(self, key: str) -> int:
        return self.stack.downsample_rate

    def forward(self, wavs: "list[torch.Tensor]") -> "dict[str, object]":
        if not isinstance(wavs, (list, tuple)) or not wavs or any(w.dim() != 1 for w in wavs):
            raise ValueError("usad_teacher upstream expects a non-empty list of 1-D 16 kHz waveforms")
        return self.cache(list(wavs), self._features, enabled=not self.training)

    def _features(self, wavs: "list[torch.Tensor]") -> "dict[str, object]":
        lens = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        out = self.stack(pad_sequence(wavs, batch_first=True), lens)
        layers = [x.clone() for x in out.layers]  # plain tensors: the teachers run in inference mode
        return {"hidden_states": layers, "last_hidden_state": layers[-1]}


def usad_teacher(ckpt: "str | os.PathLike[str] | None" = None, model_config: "str | None" = None,
                 **kwargs: object) -> TeacherUpstreamExpert:
    """s3prl hub entry: a teacher spec file (YAML/JSON) given as -k / path_or_url."""
    kwargs.pop("refresh", None)
    if not ckpt:
        raise UsadUpstreamError("the usad_teacher upstream needs a teacher spec file: pass -k SPEC.yaml")
    if not Path(str(ckpt)).is_file():
        raise UsadUpstreamError(f"usad_teacher upstream: spec file not found: {ckpt}")
    return TeacherUpstreamExpert(str(ckpt), model_config=model_config, **kwargs)
