"""Emotion "acted by parameters": prosody settings per emotion for the synthesizers, and the
matching transform of real recordings. Nobody felt anything here; the settings follow the
textbook prosodic correlates of the four IEMOCAP classes (anger and happiness: higher and wider
pitch, faster, louder; sadness: lower, narrower, slower, softer) so that a model has to hear
pitch level and range, tempo and loudness to tell the classes apart."""
from __future__ import annotations

import random
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from . import audio
from .sources import Voice


@dataclass(frozen=True)
class Style:
    """One emotion's prosody, relative to the voice's own."""

    semitones: float  # pitch level
    rate: float  # tempo factor
    gain_db: float  # loudness
    pitch_range: str  # espeak-ng SSML prosody range (x-low .. x-high)
    amplitude: int  # espeak-ng -a (0..200, 100 is its default)


# "exc" (excited) is IEMOCAP's label that s3prl folds into "hap"; here it is the louder, faster
# end of happiness.
STYLES: dict[str, Style] = {
    "neu": Style(0.0, 1.00, 0.0, "medium", 100),
    "hap": Style(3.0, 1.10, 2.0, "x-high", 120),
    "exc": Style(5.0, 1.20, 4.0, "x-high", 140),
    "ang": Style(2.0, 1.20, 6.0, "high", 170),
    "sad": Style(-3.0, 0.80, -6.0, "x-low", 70),
}
# flite's intonation spread (Hz) for each espeak range name
_FLITE_F0_STD = {"x-low": 8, "low": 14, "medium": 20, "high": 30, "x-high": 40}
_FLITE_F0_MEAN = {"M": 105.0, "F": 175.0}
# Utterance-to-utterance variation, so that classes overlap as acted speech does.
JITTER = {"semitones": 1.0, "rate": 0.05, "gain_db": 1.5}
# Level every clip is brought to before its emotion's gain (peak-normalising after the gain
# would erase loudness, one of the cues).
REFERENCE_PEAK = 0.4


def jittered(style: Style, rng: random.Random) -> Style:
    return Style(
        style.semitones + rng.uniform(-JITTER["semitones"], JITTER["semitones"]),
        style.rate * (1 + rng.uniform(-JITTER["rate"], JITTER["rate"])),
        style.gain_db + rng.uniform(-JITTER["gain_db"], JITTER["gain_db"]),
        style.pitch_range,
        style.amplitude,
    )


def _level(wav: np.ndarray, gain_db: float) -> np.ndarray:
    return np.clip(audio.normalize(wav, REFERENCE_PEAK) * 10 ** (gain_db / 20), -1.0, 1.0).astype(np.float32)


def speak(voice: Voice, text: str, style: Style) -> np.ndarray:
    """A synthetic voice reading `text` in `style` (espeak-ng through SSML prosody, flite
    through its intonation and duration settings), at the style's loudness."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        if voice.engine == "flite":
            mean = _FLITE_F0_MEAN.get(voice.gender, 120.0) * 2 ** (style.semitones / 12)
            cmd = ["flite", "-voice", voice.voice, "--setf", f"duration_stretch={1 / style.rate:.3f}",
                   "--setf", f"int_f0_target_mean={mean:.1f}",
                   "--setf", f"int_f0_target_stddev={_FLITE_F0_STD[style.pitch_range]}", "-t", text, "-o", str(out)]
        else:
            percent = (2 ** (style.semitones / 12) - 1) * 100
            ssml = (f'<speak><prosody pitch="{percent:+.0f}%" range="{style.pitch_range}">'
                    f"{escape(text)}</prosody></speak>")
            cmd = ["espeak-ng", "-m", "-v", voice.voice, "-p", str(voice.pitch), "-s", str(round(voice.speed * style.rate)),
                   "-a", str(style.amplitude), "-w", str(out), ssml]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ValueError(f"{cmd[0]} failed (exit {proc.returncode}) for {text!r}: {proc.stderr.strip()[:300]}")
        return _level(audio.trim(audio.load(out)), style.gain_db)


def act(recording: np.ndarray, style: Style) -> np.ndarray:
    """A real recording re-performed by the style: played `rate` times faster (tape-speed
    resampling, so pitch moves with tempo: +12 log2(rate) semitones; the style's own semitones
    are not applied separately) and leveled to the style's loudness."""
    # read as if recorded at SR * rate, then resampled to SR: len / rate samples at SR. The rate
    # is rounded to 200 Hz so the resampling ratio stays a small fraction (a ratio like
    # 18939/16000 makes the windowed-sinc kernel 16000 phases long: seconds per clip).
    wav = audio.to_16k_mono(audio.trim(recording), 200 * round(audio.SR * style.rate / 200))
    return _level(wav, style.gain_db)
