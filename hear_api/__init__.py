"""The HEAR 2021 API for USAD (https://hearbenchmark.com/hear-api.html), thin over usad_upstream.

    import hear_api
    model = hear_api.load_model("usad_base.safetensors")            # or layers="last", pooling="concat"
    model = hear_api.load_model("MIT-SLS/USAD-Base", trust_remote_code=True)   # an official release
    emb, ts = hear_api.get_timestamp_embeddings(audio, model)        # [n, T, D], [n, T] in ms
    scene = hear_api.get_scene_embeddings(audio, model)              # [n, D]

heareval:  usad hear embed hear_api --model usad_base.safetensors --tasks-dir tasks
(the same arguments as `python -m heareval.embeddings.runner`, which works as is where TensorFlow
is installed; `usad hear embed` first applies usad_upstream.compat.patch_heareval). --model takes
any checkpoint form of usad_upstream.release.resolve_checkpoint; a release's own code runs only
with USAD_TRUST_REMOTE_CODE=1 (or the trust_remote_code option).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import torch
from torch import nn

from usad_upstream.checkpoint import HOW_TO_GET
from usad_upstream.frontend import MIN_SAMPLES, SAMPLE_RATE, batch_fbank, check_waveforms, num_fbank_frames
from usad_upstream.model import DOWNSAMPLE_RATE, ConvSubsampling, UsadModel
from usad_upstream.release import load_encoder

__all__ = ["load_model", "get_timestamp_embeddings", "get_scene_embeddings", "UsadHearModel", "frame_timestamps_ms"]

POOLINGS = ("mean", "concat")
OPTIONS = ("layers", "pooling", "max_fbank_frames", "target_layer", "trust_remote_code")

# Frame j of the encoder is centred on fbank frame 2j (conv kernel 3, padding 1, stride 2, then
# stride 1): fbank frame k spans samples [160k, 160k + 400), so frame j is centred on sample
# 320j + 200, i.e. 20j + 12.5 ms. Exact for every input length: no frame is dropped or shifted.
# At 25 Hz (a second time stride 2, padding 1) frame j is centred on fbank frame 4j: 640j + 200.
_FIRST_CENTRE_SAMPLES = MIN_SAMPLES / 2


def frame_timestamps_ms(num_frames: int, hop: int = DOWNSAMPLE_RATE) -> torch.Tensor:
    """Centres, in ms, of the first `num_frames` encoder frames `hop` samples apart: 12.5, 32.5, ..."""
    centre = torch.arange(num_frames, dtype=torch.float64) * hop + _FIRST_CENTRE_SAMPLES
    return (centre * 1000.0 / SAMPLE_RATE).float()


class UsadHearModel(nn.Module):
    """A USAD encoder plus the fixed choice of layers that HEAR's frozen-embedding protocol needs.

    `layers` are 1-based block indices; `pooling` "mean" averages them (size D), "concat" stacks
    them on the feature axis (size D * len(layers)). The encoder is our UsadModel (windowed, so
    memory stays bounded by the window) or a release's own model (usad_upstream.release), which
    takes the whole clip at once, windowing inside as the release does.
    """

    sample_rate: int = SAMPLE_RATE

    def __init__(self, encoder: nn.Module, layers: Sequence[int], pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.layers = tuple(layers)
        self.pooling = pooling
        dim = int(encoder.config.dim)
        size = dim * len(self.layers) if pooling == "concat" else dim
        self.scene_embedding_size: int = size
        self.timestamp_embedding_size: int = size
        self.eval()  # inference only: no dropout in embeddings

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, pooling={self.pooling!r}, size={self.timestamp_embedding_size}"

    def pool(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Combine the selected block outputs ([B, T, D] each) into one [B, T, size] tensor."""
        chosen = [hidden_states[i - 1] for i in self.layers]
        if len(chosen) == 1:
            return chosen[0]
        if self.pooling == "concat":
            return torch.cat(chosen, dim=-1)
        return torch.stack(chosen, dim=0).mean(dim=0)

    def num_frames(self, audio: torch.Tensor) -> "int | None":
        """Validate audio [n, N]; its encoder frames when known before encoding (native models), else None."""
        check_waveforms(audio)
        if not isinstance(self.encoder, UsadModel):
            return None
        return int(ConvSubsampling.output_lengths(num_fbank_frames(torch.tensor(audio.shape[1]))))

    def embedding_chunks(self, audio: torch.Tensor) -> Iterator[torch.Tensor]:
        """Validate audio [n, N], move the encoder to its device, and yield consecutive
        [n, t, size] pieces covering every frame in order.

        A native encoder runs on windows of `max_fbank_frames` of the whole clip's fbank ([n, F,
        128], cheap: 128 floats per 10 ms) and only the pooled layers of each window are kept, so
        memory is bounded by the window, not by the clip.
        """
        lens = check_waveforms(audio)
        self.encoder.to(audio.device)
        if not isinstance(self.encoder, UsadModel):
            yield self.pool(self.encoder(audio, lens)["hidden_states"])
            return
        for part in self.encoder.chunks(*batch_fbank(audio, lens)):
            yield self.pool(part["hidden_states"])


def _parse_layers(value: object, num_layers: int) -> tuple[int, ...]:
    if isinstance(value, str):
        spec = value.strip().lower()
        if spec == "all":
            return tuple(range(1, num_layers + 1))
        if spec == "last":
            return (num_layers,)
        items: list[object] = [item.strip() for item in spec.split(",") if item.strip()]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = []
    try:
        layers = tuple(int(item) for item in items)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        layers = ()
    if not layers or any(not 1 <= layer <= num_layers for layer in layers):
        raise ValueError(
            f"hear_api option layers={value!r} is invalid: use 'all', 'last', or 1-based block indices "
            f"between 1 and {num_layers} (a list or a comma-separated string such as '3,6,9,12')"
        )
    if len(set(layers)) != len(layers):
        raise ValueError(f"hear_api option layers={value!r} repeats a layer")
    return layers


def load_model(model_file_path: str = "", **options: object) -> UsadHearModel:
    """Load a USAD checkpoint as a HEAR model (torch.nn.Module with sample_rate and embedding sizes).

    model_file_path: our .safetensors, a release snapshot directory or a hub id (MIT-SLS/USAD-Base).
    Options (heareval passes them with --model-options '{"layers": "last"}'):
      layers: "all" (default), "last", or 1-based block indices ("3,6,9,12" or [3, 6, 9, 12]).
      pooling: "mean" (default) or "concat" over the chosen layers.
      target_layer: USAD 2.0's option: the encoder stops after this block ("all" = 1..target_layer).
      trust_remote_code: run an official release's own code (also: USAD_TRUST_REMOTE_CODE=1).
      max_fbank_frames: encoder window in fbank frames (even); default: the checkpoint's (3000, 30 s);
        native checkpoints only (a release windows as its code does).

    Why the default is the mean of all block outputs: HEAR trains only a small MLP on frozen
    embeddings, so the layer mix cannot be learned per task as SUPERB's weighted sum is, and USAD's
    distilled layers carry different things (early/mid layers follow the speech teacher's phonetic
    layers, late ones the audio teacher's). Averaging every block keeps all of them at the model's
    own width D, so 50 Hz event embeddings stay as small on disk and in memory as other HEAR
    entries (20 min of audio: 60k x 768 floats for Base). `pooling="concat"` is the ATST-Frame-style
    alternative (D x layers wide, 12x the storage for event tasks); `layers="last"` is the cheapest.
    """
    if not model_file_path:
        raise ValueError(
            "hear_api.load_model needs a USAD checkpoint path (heareval: --model PATH; hear-validator: "
            f"-m PATH); {HOW_TO_GET}"
        )
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"hear_api.load_model: unknown option(s) {unknown}; known options are {list(OPTIONS)}")
    target_layer = options.get("target_layer")
    if target_layer is not None and (isinstance(target_layer, bool) or not isinstance(target_layer, int)):
        raise ValueError(f"hear_api option target_layer must be a block index (int), got {target_layer!r}")
    encoder = load_encoder(model_file_path, trust_remote_code=bool(options.get("trust_remote_code")),
                           target_layer=target_layer)
    window = options.get("max_fbank_frames")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int):
            raise ValueError(f"hear_api option max_fbank_frames must be an even int >= 2, got {window!r}")
        if not isinstance(encoder, UsadModel):
            raise ValueError("hear_api option max_fbank_frames applies to native checkpoints; a release windows "
                             "as its own code does (convert it with `usad convert` to choose)")
        encoder.config = dataclasses.replace(encoder.config, max_fbank_frames=window)
    layers = _parse_layers(options.get("layers", "all"), encoder.config.layers)
    pooling = options.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise ValueError(f"hear_api option pooling={pooling!r} is invalid; choose one of {list(POOLINGS)}")
    return UsadHearModel(encoder, layers, str(pooling))


def _check_model(model: object) -> UsadHearModel:
    if not isinstance(model, UsadHearModel):
        raise ValueError(f"model must come from hear_api.load_model, got {type(model).__name__}")
    return model


def get_timestamp_embeddings(audio: torch.Tensor, model: UsadHearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [n_sounds, n_samples] at 16 kHz -> (embeddings [n_sounds, n_frames, size] float32,
    timestamps [n_sounds, n_frames] = frame centres in ms, 20 ms apart, starting at 12.5 ms)."""
    model = _check_model(model)
    with torch.inference_mode():
        total = model.num_frames(audio)
        if total is None:  # a release: one piece, its frame count known only afterwards
            out = torch.cat(list(model.embedding_chunks(audio)), dim=1).float()
            total = out.shape[1]
        else:
            out = audio.new_empty(audio.shape[0], total, model.timestamp_embedding_size, dtype=torch.float32)
            start = 0
            for piece in model.embedding_chunks(audio):  # pieces are copied in and dropped
                out[:, start : start + piece.shape[1]] = piece
                start += piece.shape[1]
            assert start == total, (start, total)
        hop = model.encoder.downsample_rate
        timestamps = frame_timestamps_ms(total, hop).to(out.device).expand(out.shape[0], total).contiguous()
    return out, timestamps


def get_scene_embeddings(audio: torch.Tensor, model: UsadHearModel) -> torch.Tensor:
    """audio [n_sounds, n_samples] at 16 kHz -> [n_sounds, size]: the mean over all frames,
    accumulated window by window so a long clip never holds its frame embeddings at once."""
    model = _check_model(model)
    with torch.inference_mode():
        total: "torch.Tensor | None" = None
        frames = 0
        for piece in model.embedding_chunks(audio):
            piece_sum = piece.sum(dim=1, dtype=torch.float64)
            total = piece_sum if total is None else total + piece_sum
            frames += piece.shape[1]
        assert total is not None
        return (total / frames).float()
