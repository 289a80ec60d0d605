"""Waveform checks and the Kaldi fbank frontend (per item, so padding never leaks into features)."""
from __future__ import annotations

import torch

from .compat import import_torchaudio

SAMPLE_RATE = 16000
MIN_SAMPLES = 400  # one 25 ms fbank window
FBANK_SHIFT = 160  # 10 ms
FBANK_MEAN = -4.268  # SSAST/AST normalisation
FBANK_STD = 4.569


def check_waveforms(wavs: torch.Tensor, wav_lens: "torch.Tensor | None" = None) -> torch.Tensor:
    """Validate a padded batch [B, N] and return per-item lengths as a long tensor.

    Raises ValueError naming the problem for wrong rank, dtype, non-finite values, bad lengths
    or audio shorter than one fbank window.
    """
    if not isinstance(wavs, torch.Tensor):
        raise ValueError(f"wavs must be a torch.Tensor [batch, samples], got {type(wavs).__name__}")
    if wavs.dim() != 2:
        raise ValueError(f"wavs must have shape [batch, samples] (rank 2), got shape {tuple(wavs.shape)}")
    if not wavs.is_floating_point():
        raise ValueError(f"wavs must be floating point (16 kHz samples in [-1, 1]), got dtype {wavs.dtype}")
    if wavs.shape[0] == 0 or wavs.shape[1] == 0:
        raise ValueError(f"wavs is empty: shape {tuple(wavs.shape)}")
    if wav_lens is None:
        lens = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
    else:
        lens = torch.as_tensor(wav_lens, device=wavs.device)
        if lens.dim() != 1 or lens.shape[0] != wavs.shape[0]:
            raise ValueError(
                f"wav_lens must have shape [{wavs.shape[0]}] (one length per item), got {tuple(lens.shape)}"
            )
        if lens.is_floating_point():
            raise ValueError(f"wav_lens must be integer sample counts, got dtype {lens.dtype}")
        lens = lens.long()
        if int(lens.max()) > wavs.shape[1]:
            raise ValueError(f"wav_lens max {int(lens.max())} exceeds the padded length {wavs.shape[1]}")
    shortest = int(lens.min())
    if shortest < MIN_SAMPLES:
        raise ValueError(
            f"audio too short: item {int(lens.argmin())} has {shortest} samples; the minimum is "
            f"{MIN_SAMPLES} samples (25 ms at {SAMPLE_RATE} Hz)"
        )
    finite = torch.isfinite(wavs)
    if wav_lens is not None:  # padding may hold anything; only valid samples must be finite
        finite |= torch.arange(wavs.shape[1], device=wavs.device)[None, :] >= lens[:, None]
    if not bool(finite.all()):
        raise ValueError("wavs contains NaN or Inf samples")
    return lens


def num_fbank_frames(num_samples: torch.Tensor) -> torch.Tensor:
    """Kaldi frame count with snip_edges=True: 1 + (N - 400) // 160."""
    return 1 + torch.div(num_samples - MIN_SAMPLES, FBANK_SHIFT, rounding_mode="floor")


def fbank(wav: torch.Tensor, segment_frames: int = 6000) -> torch.Tensor:
    """Normalised 128-bin Kaldi fbank of one mono 16 kHz waveform [N] -> [frames, 128].

    Frames are independent once the utterance mean is removed (snip_edges, no dither), so long
    audio is processed in segments of `segment_frames` with identical output and bounded memory
    (20 minutes at once would need about 1 GB of FFT buffers).
    """
    kaldi = import_torchaudio().compliance.kaldi
    wav = wav - wav.mean()
    total = int(num_fbank_frames(torch.tensor(wav.shape[0])))
    parts = []
    for start in range(0, total, segment_frames):
        stop = min(start + segment_frames, total)
        piece = wav[start * FBANK_SHIFT : (stop - 1) * FBANK_SHIFT + MIN_SAMPLES]
        parts.append(
            kaldi.fbank(
                piece.unsqueeze(0),
                htk_compat=True,
                sample_frequency=SAMPLE_RATE,
                use_energy=False,
                window_type="hanning",
                num_mel_bins=128,
                dither=0.0,
                frame_length=25.0,
                frame_shift=10.0,
            )
        )
    feats = parts[0] if len(parts) == 1 else torch.cat(parts)
    return (feats - FBANK_MEAN) / (2 * FBANK_STD)


def batch_fbank(wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item fbank of a padded batch -> ([B, F_max, 128] zero-padded, frame counts [B])."""
    frame_lens = num_fbank_frames(wav_lens)
    out = wavs.new_zeros(wavs.shape[0], int(frame_lens.max()), 128, dtype=torch.float32)
    for i, n in enumerate(wav_lens.tolist()):
        feats = fbank(wavs[i, :n].float())
        out[i, : feats.shape[0]] = feats
    return out, frame_lens
