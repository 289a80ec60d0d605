"""Transformer-XL relative-position self-attention on top of scaled_dot_product_attention.

Scores are softmax((q + u) . k / sqrt(d) + bias) with bias[b, h, i, j] = (q + v)[b, h, i] .
p[h, :, T-1-i+j] / sqrt(d), p the projected sinusoids of the offsets T-1 .. -(T-1) (the scale is
folded into the cached p, so no [B, H, T, T] tensor is ever scaled). How the bias reaches the
kernel is a runtime choice (`KERNELS`, same numbers up to rounding; `attention_kernel`):

- "blocked" (CPU default): row blocks [i0, i1) need only columns T-i1 .. 2T-2-i0, so the bias
  is written block by block into one [B, H, T, T] tensor: about half the multiply-adds of the
  full [T, 2T-1] product, which decides on a compute-bound CPU.
- "aligned" (GPU default): one GEMM writes the full product into a buffer whose geometry makes
  the rel-shift a strided view that SDPA takes as it is: row stride W-1 and plane strides
  multiples of 8 elements, the view's first element 16-byte aligned. No [B, H, T, T] copy at
  all (the memory-efficient kernel would pad-copy an unaligned bias; T itself is not padded).
- "cudnn": the aligned view through the cuDNN attention backend (which accepts a bias).
- "flex": FlexAttention (compiled with dynamic=False on a GPU; eager, the reference
  implementation, on a CPU) with a score_mod that reads the position scores at clamped indices:
  no [B, H, T, T] tensor. No attention dropout (inference).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("auto", "blocked", "aligned", "cudnn", "flex")
ALIGN = 8  # elements: the memory-efficient kernel's bias alignment (16 bytes of bf16)


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
    column T-1-i+j: a strided view, no copy (each [T, W] plane must be row-major; the planes
    may lie in any order, e.g. heads outermost).
    """
    b, h, t, width = scores.shape
    if scores.stride(-1) != 1 or scores.stride(-2) != width:
        scores = scores.contiguous()
    sb, sh, _, _ = scores.stride()
    return scores.as_strided(
        (b, h, t, width - t + 1), (sb, sh, width - 1, 1), storage_offset=scores.storage_offset() + t - 1
    )


def _heads_first_matmul(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """q [B, T, H, d] . p [H, d, W] -> [B, H, T, W] as one bmm over heads (a view of an [H, B, T,
    W] result): torch.matmul would broadcast p over the batch, copying it B times."""
    b, t, h, d = q.shape
    out = torch.bmm(q.permute(2, 0, 1, 3).reshape(h, b * t, d), p.to(q.dtype))
    return out.view(h, b, t, p.shape[-1]).transpose(0, 1)


def relative_position_bias(q_v: torch.Tensor, p: torch.Tensor, block: int = 128) -> torch.Tensor:
    """bias[b, h, i, j] = q_v[b, h, i] . p[h, :, T-1-i+j] for q_v [B, H, T, d], p [H, d, 2T-1].

    A row block [i0, i1) only needs columns T-i1 .. 2T-2-i0, so computing it block by block does
    about half the multiply-adds and memory traffic of the full [T, 2T-1] product; the blocks are
    written into the one [B, H, T, T] bias.
    """
    b, h, t, _ = q_v.shape
    rows = q_v.transpose(1, 2)  # [B, T, H, d]
    out = q_v.new_empty(b, h, t, t)
    for i0 in range(0, t, block):
        i1 = min(i0 + block, t)
        out[:, :, i0:i1] = rel_shift(_heads_first_matmul(rows[:, i0:i1], p[:, :, t - i1 : 2 * t - 1 - i0]))
    return out


def aligned_position_scores(q_v: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, int]:
    """q_v [B, T, H, d] . p [H, d, 2T-1] for all offsets, in one GEMM, -> (scores [H, B, R, W],
    lead): offset column c of row i sits at scores[h, b, i, lead + c], with lead + T - 1 and W - 1
    multiples of `ALIGN` and R >= T + 1 rows (a multiple of `ALIGN`; rows >= T are zero queries),
    so that `aligned_bias` is an aligned strided view. q_v's [B, T, H, d] layout makes the GEMM's
    left operand a view (no transposed copy of q)."""
    b, t, h, d = q_v.shape
    lead = -(t - 1) % ALIGN
    width = max(lead + 2 * t - 1, t + 1)  # rows of the view hold T entries (T = 1 too)
    width += (1 - width) % ALIGN
    rows = t + 1 + (-(t + 1)) % ALIGN
    p = F.pad(p, (lead, width - lead - (2 * t - 1)))
    q_v = F.pad(q_v, (0, 0, 0, 0, 0, rows - t))
    return _heads_first_matmul(q_v, p).transpose(0, 1), lead


def aligned_bias(scores: torch.Tensor, lead: int, t: int) -> torch.Tensor:
    """The rel-shift of `aligned_position_scores` as a [B, H, T, T] strided view: entry (i, j) at
    flat position lead + T-1 + i (W-1) + j of each (h, b) plane; no copy."""
    h, b, rows, width = scores.shape
    start = lead + t - 1
    flat = scores.view(h, b, rows * width)[:, :, start : start + t * (width - 1)]
    return flat.view(h, b, t, width - 1)[..., :t].transpose(0, 1)


_compiled_flex = None


def flex_attention_for(device: torch.device):  # type: ignore[no-untyped-def]
    """FlexAttention for `device`: compiled once (dynamic=False: one kernel per shape) on a GPU;
    on a CPU the eager reference implementation (same score_mod semantics, no compile time)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type == "cpu":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def _flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scores: torch.Tensor, lead: int,
                    key_padding: "torch.Tensor | None", scale: "float | None" = None) -> torch.Tensor:
    """FlexAttention whose score_mod adds scores[h, b, i, lead + T-1-i+j] (indices clamped: the
    kernel also evaluates it on the padding of its tiles) and masks padded keys."""
    t = q.shape[2]
    last_col = scores.shape[-1] - 1

    def score_mod(score, b, h, i, j):  # type: ignore[no-untyped-def]
        i, j = i.clamp(0, t - 1), j.clamp(0, t - 1)
        score = score + scores[h, b, i, (lead + t - 1 - i + j).clamp(0, last_col)]
        if key_padding is None:
            return score
        return torch.where(key_padding[b, j], -float("inf"), score)

    return flex_attention_for(q.device)(q, k, v, score_mod=score_mod, scale=scale)


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
        self.kernel = "auto"
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
        matmul per layer. The weight's version counter invalidates the cache after any update;
        the autocast state is part of the key (it decides the dtype).
        """
        weight = self.pos_proj.weight
        device = pos.device.type
        autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        cacheable = not torch.is_grad_enabled() and not weight.is_inference()  # inference tensors have no version
        key = (pos.shape[0], pos.dtype, pos.device, autocast, weight._version, weight.data_ptr()) if cacheable else None
        if cacheable and self._pos_cache is not None and self._pos_cache[0] == key:
            return self._pos_cache[1]
        p = (self.pos_proj(pos) * (1.0 / math.sqrt(self.score_dim))).view(-1, self.heads, self.head_dim)
        p = p.permute(1, 2, 0).contiguous()
        if cacheable:
            self._pos_cache = (key, p)
        return p

    def attend(self, q_u: torch.Tensor, q_v: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: torch.Tensor,
               key_padding: "torch.Tensor | None") -> torch.Tensor:
        """softmax(q_u k^T / sqrt(d) + bias) v with the relative-position bias of q_v [B, T, H, d]
        and p [H, d, 2T-1]; q_u, k, v [B, H, T, d] -> [B, H, T, d], by `self.kernel`."""
        kernel = self.kernel
        if kernel == "auto":
            kernel = "blocked" if q_u.device.type == "cpu" else "aligned"
        dropout = self.dropout if self.training else 0.0
        t = q_u.shape[2]
        if kernel == "flex" and not self.shifted_absolute:
            if dropout:
                raise ValueError("attention kernel 'flex' has no attention dropout: use it in eval mode or with dropout 0")
            return _flex_attention(q_u, k, v, *aligned_position_scores(q_v, p), key_padding, self.sdpa_scale)
        if self.shifted_absolute:  # the releases' encoding: each item's bias at its own length, any kernel
            bias = self._shifted_absolute_bias(q_v.transpose(1, 2), p, key_padding)
        elif kernel == "blocked":
            bias = relative_position_bias(q_v.transpose(1, 2), p)
        elif kernel in ("aligned", "cudnn"):
            bias = aligned_bias(*aligned_position_scores(q_v, p), t)
        else:
            raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {list(KERNELS)}")
        if key_padding is not None:
            bias.masked_fill_(key_padding[:, None, None, :], float("-inf"))
        backends = contextlib.nullcontext()
        if kernel == "cudnn":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            backends = sdpa_kernel(SDPBackend.CUDNN_ATTENTION)
        with backends:
            return F.scaled_dot_product_attention(q_u, k, v, attn_mask=bias, dropout_p=dropout, scale=self.sdpa_scale)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_padding: "torch.Tensor | None") -> torch.Tensor:
        """x [B, T, D]; pos [2T-1, D] sinusoids; key_padding [B, T] True where padded."""
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q_u = (q + self.pos_bias_u).to(q.dtype).transpose(1, 2)  # in autocast: bf16, as SDPA would cast it
        q_v = (q + self.pos_bias_v).to(q.dtype)
        out = self.attend(q_u, q_v, k, v, self.projected_positions(pos), key_padding)
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


@contextlib.contextmanager
def attention_kernel(model: nn.Module, kernel: str) -> Iterator[None]:
    """Run every RelPositionSelfAttention in `model` with `kernel` (one of `KERNELS`) inside the block."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {list(KERNELS)}")
    layers = [m for m in model.modules() if isinstance(m, RelPositionSelfAttention)]
    before = [m.kernel for m in layers]
    for m in layers:
        m.kernel = kernel
    try:
        yield
    finally:
        for m, old in zip(layers, before):
            m.kernel = old
