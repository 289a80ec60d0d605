"""The USAD student encoder: fbank -> conv subsampling -> conv positions -> rel-pos transformer."""
from __future__ import annotations

import copy
import dataclasses
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .attention import POSITION_ENCODINGS, RelPositionSelfAttention
from .frontend import batch_fbank, check_waveforms
from .presets import UsadConfig, resolve_config

DOWNSAMPLE_RATE = 320  # samples per output frame (20 ms at 16 kHz)


def padding_mask(lengths: torch.Tensor, max_len: int) -> "torch.Tensor | None":
    """[B, T] True at padded positions, or None when nothing is padded."""
    if int(lengths.min()) == max_len:
        return None
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def _zero_padded(x: torch.Tensor, pad: "torch.Tensor | None") -> torch.Tensor:
    return x if pad is None else x.masked_fill(pad[..., None], 0.0)


class ConvSubsampling(nn.Module):
    """Two 3x3 convs: mel 128 -> 63 -> 31 (stride 2, no padding), time 100 Hz -> 50 Hz, then Linear+LN."""

    def __init__(self, n_mels: int, channels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=(2, 2), padding=(1, 0))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(1, 2), padding=(1, 0))
        freq = ((n_mels - 3) // 2 + 1 - 3) // 2 + 1
        self.proj = nn.Linear(channels * freq, dim)
        self.norm = nn.LayerNorm(dim)

    @staticmethod
    def output_lengths(frame_lens: torch.Tensor) -> torch.Tensor:
        return torch.div(frame_lens - 1, 2, rounding_mode="floor") + 1

    def forward(self, feats: torch.Tensor, frame_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, F, mels] (zero beyond frame_lens) -> ([B, T, D], lengths [B])."""
        lengths = self.output_lengths(frame_lens)
        pad = padding_mask(lengths, self.output_lengths(torch.tensor(feats.shape[1])).item())
        x = F.relu(self.conv1(feats.unsqueeze(1)))  # [B, C, T, F']
        if pad is not None:  # zeros beyond each item's end, exactly what running it alone would see
            x = x.masked_fill(pad[:, None, :, None], 0.0)
        x = F.relu(self.conv2(x))
        b, c, t, f = x.shape
        x = self.norm(self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f)))
        return _zero_padded(x, pad), lengths


class ConvPositionalEncoder(nn.Module):
    """data2vec 2.0 style: depth x [grouped Conv1d, LayerNorm (no affine), GELU], added to the input."""

    def __init__(self, dim: int, depth: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups) for _ in range(depth))
        self.dim = dim

    def forward(self, x: torch.Tensor, pad: "torch.Tensor | None") -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = _zero_padded(h, pad)
            h = conv(h.transpose(1, 2)).transpose(1, 2)
            h = F.gelu(F.layer_norm(h, (self.dim,)))
        return x + h


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Pre-LN block; returns (block output, FFN output before the residual add)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, ffn_residual_scale: float = 1.0,
                 position_encoding: str = "relative", attention_scale: str = "head_dim") -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = RelPositionSelfAttention(dim, heads, dropout, position_encoding, attention_scale)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)
        self.ffn_residual_scale = ffn_residual_scale

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, pad: "torch.Tensor | None"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.dropout(self.attn(self.attn_norm(x), pos, pad))
        ffn_out = self.ffn(self.ffn_norm(x))
        residual = ffn_out if self.ffn_residual_scale == 1.0 else ffn_out * self.ffn_residual_scale
        return x + self.dropout(residual), ffn_out


class UsadModel(nn.Module):
    """USAD student encoder. Call with a padded 16 kHz batch; see `forward` for the outputs."""

    def __init__(self, config: UsadConfig) -> None:
        super().__init__()
        self.config = config
        self.subsampling = ConvSubsampling(config.n_mels, config.conv_channels, config.dim)
        self.pos_conv = ConvPositionalEncoder(
            config.dim, config.pos_conv_depth, config.pos_conv_kernel, config.pos_conv_groups
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.dim, config.heads, config.dim * config.ffn_mult, config.dropout,
                             config.ffn_residual_scale, config.position_encoding, config.attention_scale)
            for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(config.dim)

    @property
    def downsample_rate(self) -> int:
        return DOWNSAMPLE_RATE

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, feats: torch.Tensor, frame_lens: torch.Tensor) -> dict[str, object]:
        """Encoder on at most `max_fbank_frames` fbank frames [B, F, 128] (zero-padded)."""
        x, lengths = self.subsampling(feats, frame_lens)
        pad = padding_mask(lengths, x.shape[1])
        x = self.dropout(self.pos_conv(x, pad))
        embedding = _zero_padded(x, pad)
        pos = POSITION_ENCODINGS[self.config.position_encoding](x.shape[1], self.config.dim, x.device, x.dtype)
        hidden_states, ffn = [], []
        for block in self.blocks:
            x, ffn_out = block(x, pos, pad)
            x = _zero_padded(x, pad)
            hidden_states.append(x)
            ffn.append(_zero_padded(ffn_out, pad))
        return {
            "embedding": embedding,
            "hidden_states": hidden_states,
            "ffn": ffn,
            "x": _zero_padded(self.final_norm(x), pad),
            "lengths": lengths,
        }

    def chunks(self, feats: torch.Tensor, frame_lens: torch.Tensor) -> Iterator[dict[str, object]]:
        """Encode fbank frames in consecutive windows of `max_fbank_frames` (bounded memory).

        Each yielded dict covers the whole batch; items that ended before a window get zeros there.
        """
        window = self.config.max_fbank_frames
        for start in range(0, feats.shape[1], window):
            lens = (frame_lens - start).clamp(0, window)
            alive = lens > 0
            if bool(alive.all()):
                yield self.encode(feats[:, start : start + window], lens)
                continue
            part = self.encode(feats[alive, start : start + window], lens[alive])
            t = part["lengths"].max().item()
            full = {"lengths": torch.zeros_like(frame_lens).masked_scatter(alive, part["lengths"])}
            for key in ("hidden_states", "ffn"):
                full[key] = [_scatter_rows(h, alive, t) for h in part[key]]
            for key in ("embedding", "x"):
                full[key] = _scatter_rows(part[key], alive, t)
            yield full

    def forward(self, wavs: torch.Tensor, wav_lens: "torch.Tensor | None" = None) -> dict[str, object]:
        """Padded batch [B, N] at 16 kHz -> dict with `hidden_states` and `ffn` (L tensors [B, T, D]),
        `embedding` (what enters block 1), `x` (final output), `lengths` (valid frames per item)
        and `fbank` ([B, F, 128])."""
        lens = check_waveforms(wavs, wav_lens)
        feats, frame_lens = batch_fbank(wavs, lens)
        parts = list(self.chunks(feats, frame_lens))
        if len(parts) == 1:
            out = parts[0]
        else:
            out = {
                key: [torch.cat([p[key][i] for p in parts], dim=1) for i in range(self.config.layers)]
                for key in ("hidden_states", "ffn")
            }
            for key in ("embedding", "x"):
                out[key] = torch.cat([p[key] for p in parts], dim=1)
            out["lengths"] = sum(p["lengths"] for p in parts)
        out["fbank"] = feats
        return out


def _scatter_rows(values: torch.Tensor, rows: torch.Tensor, length: int) -> torch.Tensor:
    full = values.new_zeros(rows.shape[0], length, values.shape[-1])
    full[rows] = values
    return full


def build_model(size_or_config: "str | UsadConfig | dict" = "base", **overrides: object) -> UsadModel:
    """Build a randomly initialised student from a preset name, a config or a dict, with overrides."""
    return UsadModel(resolve_config(size_or_config, **overrides))


def truncated(model: UsadModel, target_layer: int) -> UsadModel:
    """Blocks 1..target_layer of `model` as a model of their own, sharing its weights: USAD 2.0's
    `target_layer` (the encoder stops after that block; `x` is the final LayerNorm of its output)."""
    if isinstance(target_layer, bool) or not isinstance(target_layer, int) or not 1 <= target_layer <= model.config.layers:
        raise ValueError(f"target_layer must be a block index from 1 to {model.config.layers}, got {target_layer!r}")
    view = copy.copy(model)
    view._modules = dict(model._modules)  # a copy: the original keeps all its blocks
    view._modules["blocks"] = nn.ModuleList(list(model.blocks)[:target_layer])
    view.config = dataclasses.replace(model.config, layers=target_layer)
    return view
