"""MuQ (tencent-ailab, PyPI `muq` 0.1.0) as the music teacher: the package's own MuQ class, read
from its hub-mixin checkpoint folder (config.json + model.safetensors, what
`MuQ.from_pretrained(local_dir)` reads, offline), run through the package's own forward.

Input: MuQ is trained on 24 kHz audio; the teacher resamples our 16 kHz batch with torchaudio's
sinc resampler (MuQ's README loads files with librosa at 24 kHz; ours runs on the device).
Frames: the package's 128-bin log-mel at hop 240 (100 Hz, its last STFT frame dropped), then two
residual conv blocks of time stride 2 (label_rate 25 -> n_fold 4): 25 Hz, and for n samples at
24 kHz, frames = ceil(ceil((n // 240) / 2) / 2). Both are read off the built model.
Targets: the Conformer layers' hidden states, `hidden_states[1:]` (the last one after the
encoder's final LayerNorm, i.e. `last_hidden_state`); `hidden_states[0]`, the conv front end's
output, is dropped as for the other teachers.
Padding: MuQ's batched path is not padding-exact: its conv front end (3x3 convs over time) and
every Conformer layer's depthwise conv (kernel 31) mix padded frames into valid ones, and
`MuQModel.encoder` down-samples the attention mask by striding. So each item runs alone, items of
equal length together (there is no padding among them): fixed-length training crops are one batch.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path
from typing import Iterator

import torch

from ..compat import import_muq, import_torchaudio
from ..frontend import check_waveforms
from .base import Teacher, TeacherOutput

SAMPLE_RATE = 16000
MUQ_SAMPLE_RATE = 24000
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Wav2Vec2ConformerEncoder builds pos_conv_embed but its forward never calls it; its weight-norm
# parameter names changed across torch versions, so these keys may differ without harm.
UNUSED_PREFIX = "model.conformer.pos_conv_embed."
HOW_TO_GET = (
    "MuQ expects a MuQ checkpoint folder (config.json + model.safetensors, as MuQ.save_pretrained writes it), "
    "e.g. a local snapshot of OpenMuQ/MuQ-large-msd-iter"
)


@contextlib.contextmanager
def _keep_rng() -> Iterator[None]:
    """MuQModel seeds torch and `random` globally while it is built (its random quantizer); the
    caller's CPU torch and Python RNG states come back afterwards."""
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(state)


def _check_folder(path: Path) -> dict:
    if not path.is_dir():
        hint = " (a single file: MuQ checkpoints are folders)" if path.is_file() else ""
        raise ValueError(f"MuQ checkpoint folder not found: {path}{hint}; {HOW_TO_GET}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise ValueError(f"{path}: no {name}; {HOW_TO_GET}")
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path / CONFIG_NAME}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "encoder_dim" not in config or "w2v2_config" not in config:
        found = sorted(config)[:8] if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path / CONFIG_NAME}: not a MuQ config (no encoder_dim / w2v2_config; found {found}); {HOW_TO_GET}")
    if config.get("is_flash"):
        raise ValueError(
            f"{path / CONFIG_NAME}: is_flash=true; muq 0.1.0's flash path imports a module the package does not ship "
            "(modules.flash_conformer): set \"is_flash\": false (the weights are the same)"
        )
    stat = config.get("stat") or {}
    features = config.get("features", ["melspec_2048"])
    if features != ["melspec_2048"] or not {"melspec_2048_mean", "melspec_2048_std"} <= set(stat):
        raise ValueError(
            f"{path / CONFIG_NAME}: MuQ's forward needs features [\"melspec_2048\"] and stat.melspec_2048_mean / "
            f"melspec_2048_std (the log-mel normalisation); got features {features}, stat keys {sorted(stat)}"
        )
    return config


def load_muq(path: "str | os.PathLike[str]") -> torch.nn.Module:
    """The package's MuQ from a local checkpoint folder, offline. Loading is strict but for the
    Conformer's unused pos_conv_embed (see UNUSED_PREFIX): the hub mixin alone loads non-strictly,
    which would leave missing weights random without a word."""
    from safetensors import safe_open

    path = Path(path)
    _check_folder(path)
    MuQ = import_muq().MuQ
    with _keep_rng():
        try:
            model = MuQ.from_pretrained(str(path))
        except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as exc:
            first = " ".join(str(exc).splitlines()[:3])
            raise ValueError(f"{path}: MuQ weights or config do not fit the muq package's model: {first}") from None
    with safe_open(str(path / WEIGHTS_NAME), framework="pt") as handle:
        stored = set(handle.keys())
    expected = set(model.state_dict())
    missing = sorted(k for k in expected - stored if not k.startswith(UNUSED_PREFIX))
    unexpected = sorted(k for k in stored - expected if not k.startswith(UNUSED_PREFIX))
    if missing or unexpected:
        raise ValueError(
            f"{path / WEIGHTS_NAME}: MuQ weights do not match {CONFIG_NAME}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    return model.eval()


class MuQTeacher(Teacher):
    """MuQ Conformer hidden states at 25 Hz (label_rate 25) for 16 kHz input."""

    def __init__(self, model: torch.nn.Module, target: str = "hidden_states") -> None:
        super().__init__()
        if target != "hidden_states":
            raise ValueError(f"MuQ teachers give hidden states only (the Conformer layers' outputs); got target {target!r}")
        self.model = model
        inner = model.model
        stft = inner.preprocessor_melspec_2048.mel_stft
        self.hop = int(stft.hop_length)
        self.min_samples_24k = int(stft.n_fft) // 2 + 1  # the centred STFT's reflect padding needs more samples
        self.time_strides = [int(block.conv1.stride[1]) for block in inner.conv.conv]
        stride = 1
        for s in self.time_strides:
            stride *= s
        self.frame_rate = MUQ_SAMPLE_RATE / self.hop / stride
        self.num_layers = len(inner.conformer.layers)
        self.dim = int(model.config.encoder_dim)
        self.freeze()

    @staticmethod
    def resampled_length(lens: torch.Tensor) -> torch.Tensor:
        """Samples at 24 kHz of `lens` samples at 16 kHz: torchaudio's ceil(n * 24000 / 16000)."""
        return -(-lens * MUQ_SAMPLE_RATE // SAMPLE_RATE)

    def num_frames(self, lens_24k: torch.Tensor) -> torch.Tensor:
        """Output frames of clips of `lens_24k` samples: mel frames n // hop, then per 3x3 conv of
        time stride s (padding 1), floor((t - 1) / s) + 1."""
        frames = torch.div(lens_24k, self.hop, rounding_mode="floor")
        for s in self.time_strides:
            frames = torch.div(frames - 1, s, rounding_mode="floor") + 1
        return frames

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        lens = check_waveforms(wavs, wav_lens)
        lens_24k = self.resampled_length(lens)
        if int(lens_24k.min()) < self.min_samples_24k:
            i = int(lens_24k.argmin())
            minimum = 2 * (self.min_samples_24k - 1) // 3 + 1
            raise ValueError(f"audio too short for MuQ: item {i} has {int(lens[i])} samples, the minimum is {minimum} at 16 kHz")
        valid = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lens[:, None]
        wavs = wavs.masked_fill(~valid, 0.0)[:, : int(lens.max())]  # the resampler then sees zeros past each item
        with torch.autocast(wavs.device.type, enabled=False):  # a bf16 waveform would lose 8% of the targets' precision
            audio = import_torchaudio().functional.resample(wavs.float(), SAMPLE_RATE, MUQ_SAMPLE_RATE)
        frames = self.num_frames(lens_24k)
        layers = [audio.new_zeros(wavs.shape[0], int(frames.max()), self.dim) for _ in range(self.num_layers)]
        for n in sorted(set(lens_24k.tolist())):
            items = (lens_24k == n).nonzero().squeeze(1)
            hidden = self.model(audio[items, :n], output_hidden_states=True).hidden_states[1:]
            t = int(frames[items[0]])
            for full, part in zip(layers, hidden):
                full[items, :t] = part[:, :t].to(full.dtype)
        return TeacherOutput(layers=layers, lengths=frames, frame_rate=self.frame_rate)
