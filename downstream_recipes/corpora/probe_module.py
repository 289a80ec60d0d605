"""A tiny HEAR-API module (log-mel frames, no weights) used by `usad corpora check` to push every
HEAR task through heareval's own embedding runner quickly; also a floor baseline."""
from __future__ import annotations

import torch

from usad_upstream.compat import import_torchaudio

HOP_MS = 25.0


class LogMel(torch.nn.Module):
    sample_rate = 16000
    scene_embedding_size = 64
    timestamp_embedding_size = 64

    def __init__(self) -> None:
        super().__init__()
        self.mel = import_torchaudio().transforms.MelSpectrogram(16000, n_fft=800, hop_length=400, n_mels=64)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(audio) + 1e-6).transpose(1, 2)  # [B, T, 64]


def load_model(model_file_path: str = "") -> LogMel:
    return LogMel()


def get_timestamp_embeddings(audio: torch.Tensor, model: LogMel) -> tuple[torch.Tensor, torch.Tensor]:
    emb = model(audio)
    times = torch.arange(emb.shape[1], dtype=torch.float32) * HOP_MS
    return emb, times.unsqueeze(0).expand(emb.shape[0], -1)


def get_scene_embeddings(audio: torch.Tensor, model: LogMel) -> torch.Tensor:
    return model(audio).mean(dim=1)
