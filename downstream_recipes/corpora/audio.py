"""Audio helpers shared by the corpus builders: read anything soundfile reads as 16 kHz mono,
write wav/flac, fit clips to a length, and run the external renderers (espeak-ng, flite,
fluidsynth) into arrays."""
from __future__ import annotations

import subprocess
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

SR = 16000


_IMPORT_LOCK = threading.Lock()


@lru_cache(maxsize=None)
def _resampler_module():  # type: ignore[no-untyped-def]
    with _IMPORT_LOCK:  # builders call this from worker threads; import once
        from usad_upstream.compat import import_torchaudio

        return import_torchaudio().functional


def to_16k_mono(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Downmix and resample (torchaudio's windowed-sinc resampler) to 16 kHz float32."""
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    audio = audio.astype(np.float32)
    if sample_rate != SR:
        import torch

        audio = _resampler_module().resample(torch.from_numpy(audio), sample_rate, SR).numpy()
    return audio


def load(path: "str | Path") -> np.ndarray:
    """Read a file as 16 kHz mono float32; ValueError naming the file when it cannot be read."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ValueError(f"cannot read audio {path}: {exc}") from None
    return to_16k_mono(audio, rate)


def write(path: "str | Path", audio: np.ndarray) -> Path:
    """Write 16 kHz mono PCM-16 (.wav or .flac by suffix), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.clip(audio, -1.0, 1.0)
    sf.write(str(path), audio, SR, subtype="PCM_16", format="FLAC" if path.suffix == ".flac" else "WAV")
    return path


def normalize(audio: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale to a fixed peak so synthesizers and recordings have comparable levels."""
    top = float(np.abs(audio).max()) if audio.size else 0.0
    return audio if top < 1e-6 else (audio * (peak / top)).astype(np.float32)


def trim(audio: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Drop leading and trailing near-silence (relative to the peak)."""
    if not audio.size:
        return audio
    loud = np.flatnonzero(np.abs(audio) > threshold * max(float(np.abs(audio).max()), 1e-6))
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def fit(audio: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Centre-crop or zero-pad (at a random offset) to exactly `length` samples."""
    if len(audio) >= length:
        start = (len(audio) - length) // 2
        return audio[start : start + length]
    out = np.zeros(length, dtype=np.float32)
    offset = int(rng.integers(0, length - len(audio) + 1))
    out[offset : offset + len(audio)] = audio
    return out


def concat(clips: Sequence[np.ndarray], gap_s: float = 0.25) -> np.ndarray:
    """Join clips with short silences (used to make utterance-length audio from short prompts)."""
    gap = np.zeros(int(gap_s * SR), dtype=np.float32)
    parts: list[np.ndarray] = []
    for i, clip in enumerate(clips):
        if i:
            parts.append(gap)
        parts.append(clip.astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise by spectral shaping of white noise."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return normalize(noise.astype(np.float32), 0.5)


def _run(cmd: Sequence[str], what: str) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}: {proc.stderr.strip()[:300]}")


def espeak(text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    """Speak `text` with espeak-ng voice (e.g. 'en-us+f3'), pitch 0-99 and words per minute."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        _run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(out), text], "espeak-ng")
        return trim(load(out))


def flite(text: str, voice: str) -> np.ndarray:
    """Speak `text` with a flite voice (kal, kal16, awb, rms, slt)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        _run(["flite", "-voice", voice, "-t", text, "-o", str(out)], "flite")
        return trim(load(out))


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def render_notes(
    soundfont: "str | Path", notes: Sequence[tuple[int, int, int]], note_s: float, slot_s: float
) -> list[np.ndarray]:
    """Render (program, pitch, velocity) notes with fluidsynth in ONE call (loading a soundfont
    takes seconds): note i sounds for note_s seconds starting at i*slot_s, and slot i is
    returned as its own clip of slot_s seconds (release tail included)."""
    ticks_per_beat, tempo_us = 480, 500000  # 120 bpm: 960 ticks per second
    per_s = ticks_per_beat * 1e6 / tempo_us
    events = bytearray(b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big"))
    now = 0
    for i, (program, pitch, velocity) in enumerate(notes):
        on, off = int(round(i * slot_s * per_s)), int(round((i * slot_s + note_s) * per_s))
        events += _vlq(on - now) + bytes([0xC0, program])
        events += _vlq(0) + bytes([0x90, pitch, velocity])
        events += _vlq(off - on) + bytes([0x80, pitch, 0])
        now = off
    end = int(round(len(notes) * slot_s * per_s))
    events += _vlq(max(end - now, 0)) + b"\xff\x2f\x00"
    midi = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    midi += ticks_per_beat.to_bytes(2, "big") + b"MTrk" + len(events).to_bytes(4, "big") + bytes(events)
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "notes.mid", Path(tmp) / "notes.wav"
        mid.write_bytes(midi)
        _run(["fluidsynth", "-ni", "-g", "0.7", "-R", "0", "-C", "0", "-r", str(SR), "-F", str(wav), str(soundfont), str(mid)], "fluidsynth")
        audio = load(wav)
    slot = int(slot_s * SR)
    audio = np.pad(audio, (0, max(0, slot * len(notes) - len(audio))))
    return [audio[i * slot : (i + 1) * slot] for i in range(len(notes))]
