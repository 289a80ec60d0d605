"""Transformer-XL relative-position self-attention on top of scaled_dot_product_attention."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def relative_sinusoids(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal encodings of relative offsets length-1 ... -(length-1) -> [2*length-1, dim]."""
    offsets = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)
    inv_freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = offsets[:, None] * inv_freq[None, :]
    table = torch.empty(offsets.shape[0], dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.to(dtype)


def absolute_sinusoids(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoids of absolute positions 0 ... length-1 -> [length, dim] (the same formula and values)."""
    return relative_sinusoids(length, dim, device, dtype)[:length].flip(0)


# config.position_encoding -> the position table that enters every block's attention
POSITION_ENCODINGS = {"relative": relative_sinusoids, "absolute_shift": absolute_sinusoids}


def shifted_absolute_scores(scores: torch.Tensor) -> torch.Tensor:
    """The openspeech/sooftware Conformer's relative shift of [B, H, T, T] scores against ABSOLUTE
    positions 0..T-1 (pad a zero column, read the buffer back in rows of T, drop the first row).

    Kept exactly, wrap-around included: entry (i, j) is scores[i, T-1-i+j] for j <= i, 0 for
    j = i+1 and scores[i+1, j-i-2] for j > i+1. It depends on T, so padding changes it: callers
    apply it per item length (see RelPositionSelfAttention).
    """
    b, h, t, _ = scores.shape
    return F.pad(scores, (1, 0)).reshape(b, h, t * (t + 1))[:, :, t:].reshape(b, h, t, t)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """[B, H, T, W] scores over offsets -> [B, H, T, W-(T-1)] with row r shifted left by (T-1-r).

    With W = 2T-1 columns for offsets T-1 .. -(T-1), entry (i, j) is offset i - j, stored at
    column T-1-i+j: a strided view, no copy.
    """
    b, h, t, width = scores.shape
    scores = scores.contiguous()
    sb, sh, _, _ = scores.stride()
    return scores.as_strided(
        (b, h, t, width - t + 1), (sb, sh, width - 1, 1), storage_offset=scores.storage_offset() + t - 1
    )


def relative_position_bias(q_v: torch.Tensor, p: torch.Tensor, block: int = 128) -> torch.Tensor:
    """bias[b, h, i, j] = q_v[b, h, i] . p[h, :, T-1-i+j] for q_v [B, H, T, d], p [H, d, 2T-1].

    A row block [i0, i1) only needs columns T-i1 .. 2T-2-i0, so computing it block by block does
    about half the multiply-adds and memory traffic of the full [T, 2T-1] product.
    """
    b, h, t, _ = q_v.shape
    out = q_v.new_empty(b, h, t, t)
    for i0 in range(0, t, block):
        i1 = min(i0 + block, t)
        out[:, :, i0:i1] = rel_shift(torch.matmul(q_v[:, :, i0:i1], p[:, :, t - i1 : 2 * t - 1 - i0]))
    return out


class RelPositionSelfAttention(nn.Module):
    """Multi-head self-attention with learned u/v biases and projected sinusoidal offsets.

    `position_encoding="absolute_shift"` and `attention_scale="model_dim"` express the official
    releases' openspeech-style attention (scores / sqrt(dim), positions through
    `shifted_absolute_scores`); the defaults are Transformer-XL's.
    """

    def __init__(self, dim: int, heads: int, dropout: float, position_encoding: str = "relative",
                 attention_scale: str = "head_dim") -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.shifted_absolute = position_encoding == "absolute_shift"
        self.score_dim = dim if attention_scale == "model_dim" else self.head_dim
        self.sdpa_scale = None if self.score_dim == self.head_dim else 1.0 / math.sqrt(self.score_dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self._pos_cache: "tuple[tuple, torch.Tensor] | None" = None

    def projected_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """pos_proj(pos) / sqrt(head_dim) (or sqrt(dim), see attention_scale) as [H, head_dim, rows of pos].

        It depends only on weights and length, so outside autograd it is cached per length:
        repeated inference on equal-length windows (HEAR chunks, benchmarks) skips a (2T-1) x D^2
        matmul per layer. The weight's version counter invalidates the cache after any update.
        """
        weight = self.pos_proj.weight
        cacheable = not torch.is_grad_enabled() and not weight.is_inference()  # inference tensors have no version
        key = (pos.shape[0], pos.dtype, pos.device, weight._version, weight.data_ptr()) if cacheable else None
        if cacheable and self._pos_cache is not None and self._pos_cache[0] == key:
            return self._pos_cache[1]
        p = (self.pos_proj(pos) * (1.0 / math.sqrt(self.score_dim))).view(-1, self.heads, self.head_dim)
        p = p.permute(1, 2, 0).contiguous()
        if cacheable:
            self._pos_cache = (key, p)
        return p

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_padding: "torch.Tensor | None") -> torch.Tensor:
        """x [B, T, D]; pos [2T-1, D] sinusoids; key_padding [B, T] True where padded."""
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        if self.shifted_absolute:
            bias = self._shifted_absolute_bias(q_v, self.projected_positions(pos), key_padding)
        else:
            bias = relative_position_bias(q_v, self.projected_positions(pos))
        if key_padding is not None:
            bias.masked_fill_(key_padding[:, None, None, :], float("-inf"))
        out = F.scaled_dot_product_attention(
            q_u, k, v, attn_mask=bias.to(q_u.dtype), dropout_p=self.dropout if self.training else 0.0,
            scale=self.sdpa_scale,
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))

    @staticmethod
    def _shifted_absolute_bias(q_v: torch.Tensor, p: torch.Tensor, key_padding: "torch.Tensor | None") -> torch.Tensor:
        """Position bias of the "absolute_shift" encoding for each item at its own length (the shift
        depends on T, so an item of a padded batch gets exactly what it gets alone)."""
        if key_padding is None:
            return shifted_absolute_scores(torch.matmul(q_v, p))
        bias = q_v.new_zeros(q_v.shape[0], q_v.shape[1], q_v.shape[2], q_v.shape[2])
        for i, n in enumerate((~key_padding).sum(dim=1).tolist()):
            bias[i, :, :n, :n] = shifted_absolute_scores(torch.matmul(q_v[i : i + 1, :, :n], p[:, :, :n]))[0]
        return bias
