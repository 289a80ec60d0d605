"""ATST-Frame (audiossl, methods/atstframe) as a distillation teacher, without the audiossl package.

Our own encoder with the released state-dict names, the official 64-mel frontend, and the
official frame extraction: mel/dB/scale on the whole clip, then chunks of 1001 mel frames, each
giving floor(frames / 4) tokens of 40 ms, concatenated in time.

Timestamps. Token j of chunk c covers mel frames 1001*c + 4j .. 1001*c + 4j + 3, and mel frame f
is centred at f * 10 ms (centred STFT), so the token is centred at (1001*c + 4j + 1.5) * 10 ms
(`ATSTFrameTeacher.token_times`). A full chunk drops its last mel frame, so `index * 40 ms`
drifts by 10 ms per 10 s chunk; `token_times` has no drift. With `chunk_frames=1000` there is
no dropped frame at all (not the official extraction).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..compat import import_torchaudio
from ..frontend import check_waveforms
from .base import Teacher, TeacherOutput, check_target, frame_mask, load_torch_file

SAMPLE_RATE = 16000
HOP = 160  # 10 ms mel hop
N_MELS = 64
N_FFT = 1024
F_MIN, F_MAX = 60.0, 7800.0
TOP_DB = 80.0
DB_MIN, DB_MAX = -79.6482, 50.6842  # the official min-max scaling constants
PATCH_W = 4  # mel frames per token (40 ms)
CHUNK_FRAMES = 1001  # official chunk: 10 s of mel frames, the length of the position table
MIN_SAMPLES = N_FFT // 2 + 1  # centred STFT needs more samples than its reflect padding
FRAME_RATE = SAMPLE_RATE / (HOP * PATCH_W)  # 25 Hz
PREFIX = "model.teacher.encoder."
HEAD_DIM = 64  # the released small (384/6) and base (768/12) models
HOW_TO_GET = "ATST-Frame expects the released audiossl checkpoint atstframe_base.ckpt (PyTorch-Lightning .ckpt)"


@dataclass(frozen=True)
class ATSTConfig:
    """Encoder sizes; the defaults are the released base model (85,419,264 parameters)."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    n_mels: int = N_MELS
    patch_w: int = PATCH_W
    max_tokens: int = 250


class ATSTFrontend(nn.Module):
    """Per item: MelSpectrogram -> AmplitudeToDB (80 dB floor over the whole clip) -> min-max scale."""

    def __init__(self) -> None:
        super().__init__()
        transforms = import_torchaudio().transforms
        self.melspec = transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=N_FFT, hop_length=HOP,
            f_min=F_MIN, f_max=F_MAX, n_mels=N_MELS,
        )
        self.to_db = transforms.AmplitudeToDB(stype="power", top_db=TOP_DB)

    @staticmethod
    def num_frames(num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_samples, HOP, rounding_mode="floor") + 1

    def forward(self, wavs: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded batch [B, N] -> (scaled log-mel [B, 64, M] zero-padded, frames per item [B])."""
        mel_lens = self.num_frames(lens)
        out = torch.zeros(wavs.shape[0], N_MELS, int(mel_lens.max()), device=wavs.device)
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            for i, n in enumerate(lens.tolist()):
                db = self.to_db(self.melspec(wavs[i, :n].float()))
                out[i, :, : db.shape[-1]] = (db - DB_MIN) / (DB_MAX - DB_MIN) * 2 - 1
        return out, mel_lens


class PatchEmbed(nn.Module):
    """All mel bins x `patch_w` frames per token, flattened as mel_bin * patch_w + frame."""

    def __init__(self, n_mels: int, patch_w: int, dim: int) -> None:
        super().__init__()
        self.patch_w = patch_w
        self.patch_embed = nn.Linear(n_mels * patch_w, dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        b, m, f = mel.shape
        t = f // self.patch_w
        patches = mel[:, :, : t * self.patch_w].reshape(b, m, t, self.patch_w).transpose(1, 2)
        return self.patch_embed(patches.reshape(b, t, m * self.patch_w))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # rows [q; k; v]
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attend: "torch.Tensor | None") -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block; returns (output, FFN output before the residual add)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, attend: "torch.Tensor | None") -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.attn(self.norm1(x), attend)
        ffn = self.mlp(self.norm2(x))
        return x + ffn, ffn


class ATSTFrameEncoder(nn.Module):
    """The FrameAST encoder (teacher branch) with the released parameter names."""

    def __init__(self, config: ATSTConfig = ATSTConfig()) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.n_mels, config.patch_w, config.dim)
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, config.dim))  # pre-training only
        self.pos_embed = nn.Parameter(torch.zeros(1, config.max_tokens + 1, config.dim))  # row 0 unused
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_dim) for _ in range(config.depth))
        self.norm_frame = nn.LayerNorm(config.dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.mask_embed, std=0.02)

    def forward(self, mel: torch.Tensor, mel_lens: torch.Tensor, target: str = "ffn") -> tuple[list[torch.Tensor], torch.Tensor]:
        """One chunk of scaled log-mel [B, n_mels, F] (F <= 4 * max_tokens + 3) -> (per-block targets
        [B, F // 4, D], valid tokens per item). Targets: the FFN outputs, or norm_frame(block output)
        as in the official per-layer features."""
        x = self.patch_embed(mel)
        t = x.shape[1]
        if t > self.config.max_tokens:
            raise ValueError(
                f"ATST-Frame chunk of {mel.shape[-1]} mel frames gives {t} tokens; the position table "
                f"holds {self.config.max_tokens}: chunk longer input"
            )
        x = x + self.pos_embed[:, 1 : t + 1]
        token_lens = torch.div(mel_lens, self.config.patch_w, rounding_mode="floor")
        attend = None if int(token_lens.min()) == t else frame_mask(token_lens, t)[:, None, None, :]
        layers = []
        for block in self.blocks:
            x, ffn = block(x, attend)
            layers.append(ffn if target == "ffn" else self.norm_frame(x))
        return layers, token_lens


class ATSTFrameTeacher(Teacher):
    """ATST-Frame targets at 25 Hz: per-block FFN outputs (default) or norm_frame(block output)."""

    def __init__(self, encoder: ATSTFrameEncoder, target: str = "ffn", chunk_frames: int = CHUNK_FRAMES) -> None:
        super().__init__()
        max_frames = encoder.config.patch_w * (encoder.config.max_tokens + 1) - 1
        if not encoder.config.patch_w <= chunk_frames <= max_frames:
            raise ValueError(f"chunk_frames must be in [{encoder.config.patch_w}, {max_frames}], got {chunk_frames}")
        self.target = check_target(target)
        self.chunk_frames = chunk_frames
        self.frontend = ATSTFrontend()
        self.encoder = encoder
        self.frame_rate = FRAME_RATE
        self.num_layers = encoder.config.depth
        self.dim = encoder.config.dim
        self.compute_dtype: "torch.dtype | None" = None  # set by cast_frozen
        self.freeze()

    def cast_frozen(self, dtype: torch.dtype) -> "ATSTFrameTeacher":
        """Hold the frozen encoder's weights in `dtype` (bf16 on a GPU) and run it without
        autocast: no per-call weight casts. The mel frontend stays fp32. (Numbers differ from
        fp32 weights at bf16 level.)"""
        self.encoder.to(dtype)
        self.compute_dtype = dtype
        return self

    def num_tokens(self, mel_lens: torch.Tensor) -> torch.Tensor:
        """Output tokens for clips of `mel_lens` frames: floor(frames / 4) per chunk, summed."""
        per_chunk = self.chunk_frames // self.encoder.config.patch_w
        rest = torch.div(mel_lens % self.chunk_frames, self.encoder.config.patch_w, rounding_mode="floor")
        return torch.div(mel_lens, self.chunk_frames, rounding_mode="floor") * per_chunk + rest

    def token_times(self, num_samples: int) -> torch.Tensor:
        """Centre time in seconds of each output token of a clip of `num_samples` (no drift)."""
        mel_frames = num_samples // HOP + 1
        pw = self.encoder.config.patch_w
        starts = []
        for start in range(0, mel_frames, self.chunk_frames):
            tokens = min(self.chunk_frames, mel_frames - start) // pw
            starts.append(start + pw * torch.arange(tokens))
        frames = torch.cat(starts).double() + (pw - 1) / 2
        return frames * HOP / SAMPLE_RATE

    def encode(self, mel: torch.Tensor, mel_lens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Scaled log-mel of whole clips [B, 64, M] -> (per-layer [B, T, D] zero-padded, tokens [B]),
        chunk by chunk; items that ended before a chunk sit it out."""
        token_lens = self.num_tokens(mel_lens)
        per_chunk = self.chunk_frames // self.encoder.config.patch_w
        layers: list[torch.Tensor] = []
        for index, start in enumerate(range(0, mel.shape[-1], self.chunk_frames)):
            chunk_lens = (mel_lens - start).clamp(0, self.chunk_frames)
            alive = (chunk_lens >= self.encoder.config.patch_w).nonzero().squeeze(1)
            if alive.numel() == 0:
                break
            chunk = mel[alive, :, start : start + self.chunk_frames]
            outs, lens = self.encoder(chunk, chunk_lens[alive], self.target)
            if not layers:
                layers = [outs[0].new_zeros(mel.shape[0], int(token_lens.max()), self.dim) for _ in outs]
            t = int(lens.max())
            offset = index * per_chunk
            for full, part in zip(layers, outs):
                full[alive, offset : offset + t] = part[:, :t]
        valid = frame_mask(token_lens, layers[0].shape[1])[..., None]
        return [layer.masked_fill(~valid, 0.0) for layer in layers], token_lens

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        lens = check_waveforms(wavs, wav_lens)
        if int(lens.min()) < MIN_SAMPLES:
            raise ValueError(
                f"audio too short for ATST-Frame: item {int(lens.argmin())} has {int(lens.min())} samples, "
                f"the minimum is {MIN_SAMPLES}"
            )
        mel, mel_lens = self.frontend(wavs, lens)
        if self.compute_dtype is None:
            layers, token_lens = self.encode(mel, mel_lens)
        else:
            with torch.autocast(wavs.device.type, enabled=False):
                layers, token_lens = self.encode(mel.to(self.compute_dtype), mel_lens)
        return TeacherOutput(layers=layers, lengths=token_lens, frame_rate=self.frame_rate)


def _hparams(ckpt: Mapping) -> dict:
    hparams = ckpt.get("hyper_parameters") or {}
    return dict(hparams) if isinstance(hparams, Mapping) else dict(vars(hparams))


def config_from_state(state: Mapping[str, torch.Tensor], hparams: Mapping) -> ATSTConfig:
    """Encoder sizes from tensor shapes; the hyper-parameters only have to agree with them."""
    unsupported = {
        "avg_blocks": (0, "data2vec-style averaged targets"),
        "nprompt": (0, "prompt tokens"),
        "pos_type": ("cut", "interpolated 2-D positions"),
        "patch_embed": ("Linear", "a CNN patch embedding"),
    }
    for key, (expected, meaning) in unsupported.items():
        if key in hparams and hparams[key] != expected:
            raise ValueError(f"ATST-Frame checkpoint has {key}={hparams[key]!r} ({meaning}); only {key}={expected!r} is supported")
    try:
        weight = state["patch_embed.patch_embed.weight"]
        pos = state["pos_embed"]
        mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"ATST-Frame encoder weights lack {exc}; {HOW_TO_GET}") from None
    dim, patch_size = weight.shape
    patch_w = int(hparams.get("patch_w", PATCH_W))
    n_mels = patch_size // patch_w
    if n_mels != N_MELS or int(hparams.get("patch_h", N_MELS)) != N_MELS:
        raise ValueError(f"ATST-Frame patch embedding takes {patch_size} values; expected {N_MELS} mel bins x {patch_w} frames")
    if dim % HEAD_DIM:
        raise ValueError(f"ATST-Frame width {dim} is not a multiple of the {HEAD_DIM}-d heads")
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    return ATSTConfig(dim=dim, depth=depth, heads=dim // HEAD_DIM, mlp_dim=mlp_dim, n_mels=n_mels,
                      patch_w=patch_w, max_tokens=pos.shape[1] - 1)


def load_atst_frame(path: "str | os.PathLike[str]", trust_pickle: bool = False) -> ATSTFrameEncoder:
    """Build the teacher encoder from a released ATST-Frame Lightning checkpoint (the keys under
    `model.teacher.encoder.`, as the official embedding code uses; student, projectors and
    predictor are ignored)."""
    ckpt = load_torch_file(path, "ATST-Frame", trust_pickle)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        found = sorted(ckpt)[:6] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        hint = " (it looks like a WavLM checkpoint: use kind 'wavlm')" if isinstance(ckpt, Mapping) and "cfg" in ckpt else ""
        raise ValueError(f"{path}: not a PyTorch-Lightning checkpoint (no 'state_dict'; found {found}){hint}; {HOW_TO_GET}")
    state = {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    if not state:
        prefixes = sorted({".".join(k.split(".")[:3]) for k in ckpt["state_dict"]})[:6]
        raise ValueError(f"{path}: no weights under {PREFIX!r} (found prefixes {prefixes}); {HOW_TO_GET}")
    encoder = ATSTFrameEncoder(config_from_state(state, _hparams(ckpt)))
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: ATST-Frame encoder weights do not match: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return encoder.eval()
