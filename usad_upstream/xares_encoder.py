"""An X-ARES audio encoder (xares 0.1.3's contract) over any USAD checkpoint, thin over hear_api.

    from usad_upstream.xares_encoder import UsadEncoder
    encoder = UsadEncoder("usad_base.safetensors")             # or a release snapshot / hub id
    encoder = UsadEncoder("MIT-SLS/USAD2-Large-Plus", trust_remote_code=True, target_layer=20)
    frames = encoder(audio)                                    # [B, N] 16 kHz -> [B, T, output_dim]

X-ARES builds its encoder without arguments (`python -m xares.run usad_upstream/xares_encoder.py
TASKS...`), so the checkpoint and options can also come from the environment:
USAD_XARES_CHECKPOINT=PATH and USAD_XARES_OPTIONS='{"layers": "last"}'. This module imports no
xares code; xares asks for exactly one attribute whose name ends in "Encoder" here.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

import hear_api
from usad_upstream.checkpoint import HOW_TO_GET
from usad_upstream.frontend import SAMPLE_RATE

CHECKPOINT_ENV = "USAD_XARES_CHECKPOINT"
OPTIONS_ENV = "USAD_XARES_OPTIONS"


def _env_options() -> dict:
    text = os.environ.get(OPTIONS_ENV, "").strip()
    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{OPTIONS_ENV} is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(options, dict):
        raise ValueError(f"{OPTIONS_ENV} must be a JSON object of hear_api options, got {text!r}")
    return options


class UsadEncoder(nn.Module):
    """USAD frame embeddings for X-ARES: `sampling_rate` 16000, `output_dim` the embedding
    width, `hop_size_in_ms` the model's own frame hop (20 ms at 50 Hz, 40 ms at 25 Hz).

    Options are hear_api.load_model's (layers, pooling, target_layer, trust_remote_code,
    max_fbank_frames), with the same default: the mean of all block outputs, because X-ARES,
    like HEAR, trains only a linear layer (or kNN) on frozen embeddings. Each clip of a padded
    batch is encoded as X-ARES hands it over (it passes no lengths); long clips go through the
    encoder's 30 s windows, so 10 minutes of audio stay within bounded memory.
    """

    def __init__(self, checkpoint: "str | os.PathLike[str] | None" = None, **options: object) -> None:
        super().__init__()
        checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV, "")
        if not checkpoint:
            raise ValueError(f"UsadEncoder needs a checkpoint: UsadEncoder(PATH), or {CHECKPOINT_ENV}=PATH when "
                             f"xares builds the encoder without arguments; {HOW_TO_GET}")
        self.model = hear_api.load_model(str(checkpoint), **(options or _env_options()))
        self.sampling_rate: int = SAMPLE_RATE
        self.output_dim: int = self.model.timestamp_embedding_size
        self.hop_size_in_ms: float = 1000.0 * self.model.encoder.downsample_rate / SAMPLE_RATE

    def extra_repr(self) -> str:
        return f"output_dim={self.output_dim}, hop_size_in_ms={self.hop_size_in_ms:g}"

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, N] (or [N]) at 16 kHz -> float32 [B, T, output_dim], frame j centred on
        hop * j + 12.5 ms."""
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        return hear_api.get_timestamp_embeddings(audio, self.model)[0]
