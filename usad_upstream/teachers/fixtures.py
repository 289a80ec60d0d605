"""Randomly initialised teacher checkpoints in the ORIGINAL on-disk formats, for tests, benchmarks
and demos where the released weights cannot be downloaded.

- ATST-Frame: a PyTorch-Lightning .ckpt like atstframe_base.ckpt: `state_dict` with the student
  and teacher branches (`model.{student,teacher}.encoder.*`, `.projector.*`, student
  `.predictor.*`), `hyper_parameters`, `epoch`, `global_step`, `pytorch-lightning_version`.
- WavLM: a dict {"cfg": WavLMConfig fields, "model": state dict} like WavLM-Base+.pt.
Defaults are the real Base sizes; smaller ones are for fast tests.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import atomic_write
from .atst import ATSTConfig, ATSTFrameEncoder
from .wavlm import _s3prl_wavlm

# The WavLM Base+ configuration (WavLM paper / s3prl's WavLMConfig field names).
WAVLM_BASE_PLUS_CFG: dict = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "feature_grad_mult": 0.1,
    "normalize": False,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05,
    "dropout_input": 0.1,
    "dropout_features": 0.1,
    "mask_length": 10,
    "mask_prob": 0.8,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
}


def _byol_mlp(prefix: str, in_dim: int, hidden: int, out_dim: int) -> dict[str, torch.Tensor]:
    """audiossl's 2-layer BYOL MLP: Linear(no bias) -> BatchNorm1d -> ReLU -> Linear(no bias)."""
    bn = nn.BatchNorm1d(hidden)
    state = {f"{prefix}.0.weight": nn.Linear(in_dim, hidden, bias=False).weight.detach()}
    state.update({f"{prefix}.1.{k}": v for k, v in bn.state_dict().items()})
    state[f"{prefix}.3.weight"] = nn.Linear(hidden, out_dim, bias=False).weight.detach()
    return state


def write_atst_checkpoint(
    path: "str | os.PathLike[str]", dim: int = 768, depth: int = 12, seed: int = 0, mlp_hidden: int = 4096
) -> Path:
    """Write a random ATST-Frame Lightning checkpoint; student and teacher encoders differ, so a
    loader that picks the wrong branch is caught. heads = dim / 64 as in the released models."""
    if dim % 64:
        raise ValueError(f"ATST-Frame width must be a multiple of the 64-d heads, got {dim}")
    torch.manual_seed(seed)
    config = ATSTConfig(dim=dim, depth=depth, heads=dim // 64, mlp_dim=4 * dim)
    state: dict[str, torch.Tensor] = {}
    for branch in ("student", "teacher"):
        encoder = ATSTFrameEncoder(config)
        for module in encoder.modules():  # audiossl's init: truncated normal weights, zero biases
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        state.update({f"model.{branch}.encoder.{k}": v for k, v in encoder.state_dict().items()})
        state.update(_byol_mlp(f"model.{branch}.projector", dim, mlp_hidden, 256))
    state.update(_byol_mlp("model.student.predictor", 256, mlp_hidden, 256))
    arch = {384: "small", 768: "base"}.get(dim, f"custom{dim}")
    ckpt = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "1.9.5",
        "state_dict": state,
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "arch": arch, "learning_rate": 5e-4, "warmup_steps": 1300, "max_steps": 39010, "ema": 0.99,
            "symmetric": True, "pos_type": "cut", "avg_blocks": 0, "patch_embed": "Linear",
            "patch_h": 64, "patch_w": 4, "n_mels": 64, "nprompt": 0,
        },
    }
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    return Path(path)


def write_wavlm_checkpoint(path: "str | os.PathLike[str]", seed: int = 0, **cfg_overrides: object) -> Path:
    """Write a random WavLM checkpoint {"cfg", "model"}; Base+ unless `cfg_overrides` say otherwise."""
    module = _s3prl_wavlm()
    unknown = set(cfg_overrides) - set(vars(module.WavLMConfig()))
    if unknown:
        raise ValueError(f"unknown WavLM config fields {sorted(unknown)}")
    cfg = {**WAVLM_BASE_PLUS_CFG, **cfg_overrides}
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = module.WavLM(module.WavLMConfig(cfg))
    ckpt = {"cfg": cfg, "model": model.state_dict()}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    return Path(path)
