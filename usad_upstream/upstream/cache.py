"""Per-waveform feature cache for a frozen upstream under s3prl's runner.

A SUPERB probe with a frozen upstream recomputes the upstream on every step, although each
training file comes back every epoch and the dev split at every evaluation. On CPU, with small
corpora, that forward is most of a probe's cost (USAD tiny on 32 Fluent Speech Commands clips:
0.5 s of a ~1 s step). The cache computes each distinct waveform once, on its own (batch of one,
so its features do not depend on which files share its batch; they match the batched forward to
~1e-6), and pads cached rows back into the batch shape the runner expects.

Off unless USAD_FEATURE_CACHE_MB is a positive budget (`usad superb run --feature-cache-mb`).
It is bypassed whenever gradients are on or the upstream is in training mode (`-f`, fine-tuning),
and stops storing once the budget is used (randomly cropped or noised inputs never repeat).
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch.nn.utils.rnn import pad_sequence

FEATURE_CACHE_ENV = "USAD_FEATURE_CACHE_MB"
Features = dict[str, object]


def parse_megabytes(text: str) -> float:
    """A cache budget in megabytes: a finite number >= 0 (ValueError otherwise)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(f"expected a number of megabytes >= 0, got {text!r}")
    return value


def _key(wav: torch.Tensor) -> bytes:
    data = wav.detach().cpu().contiguous().numpy()  # hashed through the buffer, no copy
    return hashlib.blake2b(data, digest_size=16).digest() + str(wav.dtype).encode()


class FeatureCache:
    """Maps a waveform's bytes to its per-layer features (hidden_states + last_hidden_state)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        # per waveform: its hidden states (one row each) and its last_hidden_state, None when that
        # is the top hidden state (the teacher upstream's case), so it is kept once
        self._store: dict[bytes, tuple[list[torch.Tensor], "torch.Tensor | None"]] = {}

    def __call__(self, wavs: "list[torch.Tensor]", compute: Callable[["list[torch.Tensor]"], Features],
                 enabled: bool = True) -> Features:
        """Features of `wavs` as `compute(wavs)` would give them, from the cache where possible."""
        if self.max_bytes <= 0 or not enabled or torch.is_grad_enabled():
            return compute(wavs)
        keys = [_key(w) for w in wavs]
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        if missing and self.used_bytes >= self.max_bytes:
            return compute(wavs)
        computed = 0
        for i in missing:
            if keys[i] not in self._store:  # else the same waveform came twice in this batch
                self._put(keys[i], compute([wavs[i]]))
                computed += 1
        self.misses += computed
        self.hits += len(wavs) - computed
        rows = [self._store[k] for k in keys]
        hidden = [pad_sequence([h[j] for h, _ in rows], batch_first=True) for j in range(len(rows[0][0]))]
        last = hidden[-1] if rows[0][1] is None else pad_sequence([x for _, x in rows], batch_first=True)
        return {"hidden_states": hidden, "last_hidden_state": last}

    def _put(self, key: bytes, features: Features) -> None:
        hidden = [h[0] for h in features["hidden_states"]]
        last = features["last_hidden_state"]
        last = None if last is features["hidden_states"][-1] else last[0]
        kept = hidden if last is None else [*hidden, last]
        self.used_bytes += sum(t.numel() * t.element_size() for t in kept)
        self._store[key] = (hidden, last)
