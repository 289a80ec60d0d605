"""The HEAR 2021 API over teacher spec files: any teacher, or several concatenated, as a HEAR module.

    python -m heareval.embeddings.runner hear_api.teacher --model speech_teacher.yaml
    usad hear run --module hear_api.teacher --model teachers_concat.yaml --tasks-dir tasks

The spec file format is usad_upstream/teachers/stack.py's. Embeddings are the mean of all of the
stack's layers (the same default as hear_api for the student, so both are read the same way);
`layers` picks 1-based layers ("all", "last" or "3,6"). Timestamps are frame centres at the
stack's frame rate; scene embeddings are the mean over frames.
"""
from __future__ import annotations

import torch
from torch import nn

from usad_upstream.compat import import_torchaudio
from usad_upstream.frontend import check_waveforms
from usad_upstream.teachers.stack import TeacherStack, load_teacher_stack

from . import _parse_layers

__all__ = ["load_model", "get_timestamp_embeddings", "get_scene_embeddings", "TeacherHearModel"]

import_torchaudio()  # before any inference_mode block (see hear_api/__init__.py)

OPTIONS = ("layers",)


class TeacherHearModel(nn.Module):
    """A TeacherStack plus the fixed layer choice HEAR's frozen-embedding protocol needs."""

    sample_rate: int = 16000

    def __init__(self, stack: TeacherStack, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.stack = stack
        self.layers = layers
        self.scene_embedding_size: int = stack.dim
        self.timestamp_embedding_size: int = stack.dim
        self.eval()

    def embed(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, N] -> (frames [n, T, D] zero past each item's end, valid frames [n])."""
        lens = check_waveforms(audio)
        self.stack.to(audio.device)
        out = self.stack(audio, lens)
        chosen = torch.stack([out.layers[i - 1] for i in self.layers]).mean(dim=0)
        return chosen, out.lengths


def load_model(model_file_path: str = "", **options: object) -> TeacherHearModel:
    """A teacher spec file (YAML/JSON) as a HEAR model; option `layers` as in hear_api."""
    if not model_file_path:
        raise ValueError("hear_api.teacher.load_model needs a teacher spec file (heareval: --model SPEC.yaml)")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"hear_api.teacher.load_model: unknown option(s) {unknown}; known options are {list(OPTIONS)}")
    stack = load_teacher_stack(model_file_path)
    return TeacherHearModel(stack, _parse_layers(options.get("layers", "all"), stack.num_layers))


def _check_model(model: object) -> TeacherHearModel:
    if not isinstance(model, TeacherHearModel):
        raise ValueError(f"model must come from hear_api.teacher.load_model, got {type(model).__name__}")
    return model


def get_timestamp_embeddings(audio: torch.Tensor, model: TeacherHearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [n, N] at 16 kHz -> (embeddings [n, T, D], timestamps [n, T] = frame centres in ms)."""
    model = _check_model(model)
    with torch.inference_mode():
        emb, _ = model.embed(audio)
        centres = (torch.arange(emb.shape[1], dtype=torch.float64) + 0.5) * 1000.0 / model.stack.frame_rate
        timestamps = centres.float().to(emb.device).expand(emb.shape[0], -1).contiguous()
    return emb.float(), timestamps


def get_scene_embeddings(audio: torch.Tensor, model: TeacherHearModel) -> torch.Tensor:
    """audio [n, N] at 16 kHz -> [n, D]: the mean over each clip's valid frames."""
    model = _check_model(model)
    with torch.inference_mode():
        emb, lengths = model.embed(audio)
        return (emb.sum(dim=1) / lengths.clamp(min=1)[:, None].to(emb.dtype)).float()
