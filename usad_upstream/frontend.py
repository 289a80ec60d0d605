"""Waveform checks and the Kaldi fbank frontend: one batched pass, exactly torchaudio's per-item
kaldi.fbank, padding never leaking into features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


# Kaldi fbank settings (SPEC: 25 ms Hanning window, 10 ms shift, 128 mel bins, pre-emphasis 0.97,
# DC offset removal, power spectrum, no dither, snip_edges, htk_compat without the energy column)
KALDI_OPTIONS = dict(
    htk_compat=True, sample_frequency=SAMPLE_RATE, use_energy=False, window_type="hanning",
    num_mel_bins=128, dither=0.0, frame_length=25.0, frame_shift=10.0,
)
FFT_SIZE = 512  # the 400-sample window rounded up to a power of two, as Kaldi does
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Kaldi's default lowest mel edge (Hz); the highest is Nyquist
# Frames per pass over the whole batch. On a GPU one pass covers 32 clips of 10 s (one launch per
# operator; about 64 MB per [frames, 512] fp32 buffer); on a CPU passes of ~2000 frames keep the
# buffers in cache, where one big pass is memory-bound (measured: results/bench/NOTES.md). Longer
# input goes in consecutive passes either way, so memory stays bounded (20 minutes at once would
# need about 1 GB of FFT buffers).
BATCH_FRAMES = {"cpu": 2048}
BATCH_FRAMES_DEFAULT = 32768

_constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _kaldi_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Hanning window [400], mel banks [128, 257], float32 epsilon), built once per device the
    way torchaudio builds them on every call. Outside inference mode, so that they stay usable
    under autograd whoever asks first."""
    if device not in _constants:
        kaldi = import_torchaudio().compliance.kaldi
        with torch.inference_mode(False), torch.no_grad():
            window = torch.hann_window(MIN_SAMPLES, periodic=False, device=device, dtype=torch.float32)
            banks, _ = kaldi.get_mel_banks(128, FFT_SIZE, float(SAMPLE_RATE), LOW_FREQ, 0.0, 100.0, -500.0, 1.0)
            banks = F.pad(banks, (0, 1)).to(device=device, dtype=torch.float32)  # no weight on Nyquist
            eps = torch.tensor(torch.finfo(torch.float32).eps, device=device)
        _constants[device] = (window, banks, eps)
    return _constants[device]


def _log_mel(frames: torch.Tensor) -> torch.Tensor:
    """Raw frames [..., 400] -> Kaldi log-mel [..., 128] by the operations torchaudio's
    kaldi.fbank applies to each frame, in the same order (DC offset, pre-emphasis x[j] - 0.97
    x[j-1] with x[-1] = x[0], window, zero-padding to 512, |rfft|^2, mel banks, log floor), so
    the values match; in place in one zero-padded buffer (autograd-safe: no saved value is
    overwritten), which halves the memory traffic."""
    window, banks, eps = _kaldi_constants(frames.device)
    buf = frames.new_empty(*frames.shape[:-1], FFT_SIZE)
    buf[..., MIN_SAMPLES:] = 0.0
    x = buf[..., :MIN_SAMPLES]
    x.copy_(frames).sub_(frames.mean(-1, keepdim=True))
    previous = x * PREEMPHASIS
    x[..., 1:] -= previous[..., :-1]
    x[..., :1] -= previous[..., :1]
    x *= window
    spectrum = torch.fft.rfft(buf).abs().pow(2.0)
    return torch.max(torch.matmul(spectrum, banks.T), eps).log_()


def batch_fbank(
    wavs: torch.Tensor, wav_lens: torch.Tensor, batch_frames: "int | None" = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised 128-bin Kaldi fbank of a padded batch, in one batched pass on the batch's
    device -> ([B, F_max, 128] zero beyond each item's frames, frame counts [B]).

    Equal to torchaudio's kaldi.fbank of each item alone after removing its mean (`kaldi_fbank`);
    whatever the padding holds (NaN included) changes nothing. Frames are independent once the
    mean is removed, so the frame axis runs in passes of about `batch_frames` frames for the whole
    batch (`BATCH_FRAMES`: bounded memory). Always fp32, also inside an autocast region.
    """
    frame_lens = num_fbank_frames(wav_lens)
    total = int(frame_lens.max())
    if batch_frames is None:
        batch_frames = BATCH_FRAMES.get(wavs.device.type, BATCH_FRAMES_DEFAULT)
    per_pass = max(1, batch_frames // wavs.shape[0])
    with torch.autocast(wavs.device.type, enabled=False):
        valid = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < wav_lens[:, None]
        wavs = wavs.float().masked_fill(~valid, 0.0)
        wavs = wavs - wavs.sum(1, keepdim=True) / wav_lens[:, None]
        parts = []
        for start in range(0, total, per_pass):
            stop = min(start + per_pass, total)
            piece = wavs[:, start * FBANK_SHIFT : (stop - 1) * FBANK_SHIFT + MIN_SAMPLES]
            parts.append(_log_mel(piece.unfold(1, MIN_SAMPLES, FBANK_SHIFT)))
        feats = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        padded = torch.arange(total, device=wavs.device)[None, :, None] >= frame_lens[:, None, None]
        feats = ((feats - FBANK_MEAN) / (2 * FBANK_STD)).masked_fill_(padded, 0.0)
    return feats, frame_lens


def fbank(wav: torch.Tensor, segment_frames: "int | None" = None) -> torch.Tensor:
    """Normalised fbank of one mono 16 kHz waveform [N] -> [frames, 128]: `batch_fbank` of one
    item, in passes of `segment_frames` frames."""
    lens = torch.tensor([wav.shape[0]], device=wav.device)
    return batch_fbank(wav[None], lens, segment_frames)[0][0]


def kaldi_fbank(wav: torch.Tensor) -> torch.Tensor:
    """The reference `batch_fbank` reproduces: torchaudio's kaldi.fbank of one waveform [N] after
    removing its mean, normalised -> [frames, 128]. One item per call (many small operators)."""
    kaldi = import_torchaudio().compliance.kaldi
    feats = kaldi.fbank((wav - wav.mean()).unsqueeze(0), **KALDI_OPTIONS)
    return (feats - FBANK_MEAN) / (2 * FBANK_STD)
