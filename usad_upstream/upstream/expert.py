"""The s3prl upstream expert: a USAD student checkpoint behind s3prl's UpstreamBase interface.

hidden_states follows s3prl's other transformer upstreams (WavLM, HuBERT, wav2vec 2.0): entry 0 is
the input embedding (conv subsampling + convolutional positions, i.e. what enters block 1), then
one entry per transformer block (the model's `hidden_states`), so a `base` model gives 13 and the
SUPERB weighted sum sees the same kind of stack as for the other upstreams. last_hidden_state is
the model's final output (after the final LayerNorm). At 50 Hz (downsample rate 320) the frame
count, (N - 400) // 320 + 1, is exactly wav2vec 2.0's, so s3prl's Featurizer and S3PRLUpstream
length rules hold for every input of at least 400 samples; 25 Hz releases report 640.

The checkpoint is anything `usad_upstream.release.resolve_checkpoint` names: our .safetensors, a
release snapshot directory or a hub id (the release's own code runs it, only with
USAD_TRUST_REMOTE_CODE=1 or trust_remote_code=True). Options: `target_layer` (USAD 2.0: the
encoder stops after that block) through S3PRLUpstream's extra_conf, or `-g target_layer=20`.
"""
from __future__ import annotations

import os

import torch
from torch.nn.utils.rnn import pad_sequence

from ..checkpoint import HOW_TO_GET, CheckpointError
from ..compat import patch_s3prl
from ..release import load_encoder
from .cache import FEATURE_CACHE_ENV, FeatureCache, parse_megabytes

patch_s3prl()

from s3prl.upstream.interfaces import UpstreamBase  # noqa: E402  (needs the patch above)


class UsadUpstreamError(ValueError):
    """A missing or unusable checkpoint/config given to the usad upstream."""


def feature_cache() -> FeatureCache:
    """The feature cache USAD_FEATURE_CACHE_MB asks for (unset or 0: none)."""
    text = os.environ.get(FEATURE_CACHE_ENV, "").strip() or "0"
    try:
        megabytes = parse_megabytes(text)
    except ValueError:
        raise UsadUpstreamError(f"{FEATURE_CACHE_ENV}={text!r}: expected a number of megabytes >= 0") from None
    return FeatureCache(int(megabytes * 2**20))


class UpstreamExpert(UpstreamBase):
    """USAD for s3prl's runner, Featurizer and S3PRLUpstream: list of 1-D 16 kHz waveforms in,
    {"hidden_states": [embedding, block 1, ..., block L], "last_hidden_state": final output} out."""

    def __init__(self, ckpt: str, model_config: "str | None" = None, target_layer: "int | None" = None,
                 trust_remote_code: "bool | None" = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if model_config:
            target_layer = model_options(model_config).get("target_layer", target_layer)
        try:
            self.model = load_encoder(ckpt, trust_remote_code=trust_remote_code, target_layer=target_layer)
        except CheckpointError as exc:
            message = str(exc) if HOW_TO_GET in str(exc) else f"{exc}; {HOW_TO_GET}"
            raise UsadUpstreamError(f"usad upstream: {message}") from None
        except ValueError as exc:  # the resolver's and the release backend's one-line errors
            raise UsadUpstreamError(f"usad upstream: {exc}") from None
        self.cache = feature_cache()

    def get_downsample_rates(self, key: str) -> int:
        return self.model.downsample_rate

    def forward(self, wavs: "list[torch.Tensor]") -> "dict[str, object]":
        if not isinstance(wavs, (list, tuple)) or not wavs:
            raise ValueError(f"usad upstream expects a non-empty list of 1-D waveforms, got {type(wavs).__name__}")
        shapes = [tuple(w.shape) for w in wavs]
        if any(len(s) != 1 for s in shapes):
            raise ValueError(f"usad upstream expects 1-D waveforms (16 kHz mono), got shapes {shapes}")
        return self.cache(list(wavs), self._features, enabled=not self.training)

    def _features(self, wavs: "list[torch.Tensor]") -> "dict[str, object]":
        lens = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        out = self.model(pad_sequence(wavs, batch_first=True), lens)
        if "embedding" not in out:
            raise UsadUpstreamError("usad upstream: the release gives no input embedding (hidden_states[0] for s3prl) and "
                                    "its first block could not be found; convert it with `usad convert`")
        return {"hidden_states": [out["embedding"], *out["hidden_states"]], "last_hidden_state": out["x"]}


def model_options(text: str) -> dict[str, int]:
    """s3prl's -g/model_config for usad: `target_layer=N` (the checkpoint carries its own config)."""
    options: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key.strip() != "target_layer" or not value.strip().isdigit():
            raise UsadUpstreamError(
                f"usad upstream: -g/model_config {text!r} is not an option for usad: the checkpoint carries its own "
                "config; the one option is -g target_layer=N (USAD 2.0: stop after block N)"
            )
        options["target_layer"] = int(value)
    return options
