"""Official USAD releases and the Hugging Face format: one checkpoint resolver for every consumer.

    from usad_upstream.release import load_encoder
    enc = load_encoder("student.safetensors")                          # our format: native UsadModel
    enc = load_encoder("MIT-SLS/USAD-Base", trust_remote_code=True)    # the release's own code
    enc = load_encoder("exported_dir")                                  # `usad export --hf` output: native
    out = enc(wavs, wav_lens)   # embedding, hidden_states, ffn, x, lengths (+ fbank), either way

resolve.py names checkpoints (file, snapshot directory, hub id); backend.py runs a release's own
code behind our contract; convert.py turns a release into a verified native checkpoint;
hf_export.py (with bundle.py) writes our students in the release's format; fixtures.py writes a
stand-in release for tests and benchmarks.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .backend import TRUST_ENV, ReleaseEncoder, load_release_module, remote_code_allowed
from .resolve import ReleaseError, ResolvedCheckpoint, Snapshot, resolve_checkpoint

__all__ = ["load_encoder", "resolve_checkpoint", "ReleaseEncoder", "ReleaseError", "ResolvedCheckpoint",
           "Snapshot", "TRUST_ENV", "remote_code_allowed"]


def load_encoder(spec: "str | Path | ResolvedCheckpoint", trust_remote_code: "bool | None" = None,
                 target_layer: "int | None" = None, autocast_dtype: "torch.dtype | None" = None) -> nn.Module:
    """Any checkpoint form as an eval-mode encoder with UsadModel's call contract, on CPU.

    Our formats load natively; an official release runs its own code (only with trust_remote_code
    or USAD_TRUST_REMOTE_CODE=1), fp32 unless `autocast_dtype` asks for lower precision.
    `target_layer` (USAD 2.0): stop after that block.
    """
    from ..checkpoint import load_model
    from ..model import truncated
    from .hf_export import load_export

    resolved = spec if isinstance(spec, ResolvedCheckpoint) else resolve_checkpoint(spec)
    with torch.inference_mode(False):  # weights loaded inside inference mode could never be used outside it
        if resolved.kind == "release":
            assert resolved.snapshot is not None
            release = load_release_module(resolved.snapshot, trust_remote_code)
            return ReleaseEncoder(release, resolved.snapshot, target_layer, autocast_dtype)
        model = load_model(resolved.path) if resolved.kind == "student" else load_export(resolved.snapshot)
    if target_layer is not None:
        model = truncated(model, target_layer)
    return model.eval()

