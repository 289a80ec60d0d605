"""README (Distillation): the trainer's audio is "resampled to 16 kHz mono". Checked on values: every
crop DistillData hands the student is compared with the downmixed signal written analytically,
evaluated at the crop's own 16 kHz sample times (an independent computation, not the resampler)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf

from usad_upstream.distill.data import DataConfig, DistillData, build_manifest

# (sample rate, channels, left/right tones in Hz): far below every Nyquist, so resampling keeps them
FILES = {"a.wav": (22050, 2, (330.0, 1210.0)), "b.flac": (8000, 2, (250.0, 700.0)), "c.wav": (44100, 1, (520.0, None)),
         "d.wav": (16000, 2, (440.0, 95.0))}
AMPS = (0.4, 0.25)


def signal(seconds: "np.ndarray", tones: tuple) -> np.ndarray:
    """The file's channels at times `seconds` ([N] -> [N, channels])."""
    left = AMPS[0] * np.sin(2 * math.pi * tones[0] * seconds)
    if tones[1] is None:
        return left[:, None]
    right = AMPS[1] * np.sin(2 * math.pi * tones[1] * seconds + 0.7)
    return np.stack([left, right], axis=1)


def test_crops_are_downmixed_and_resampled_to_16k_on_values(tmp_path: Path) -> None:
    for name, (sr, _, tones) in FILES.items():
        sf.write(tmp_path / name, signal(np.arange(int(3.3 * sr)) / sr, tones).astype(np.float32), sr, subtype="FLOAT"
                 if name.endswith(".wav") else "PCM_24")
    entries, _ = build_manifest([tmp_path], "sound")
    config = DataConfig.from_dict({"max_seconds": 1.5, "min_seconds": 0.5, "crop": "random", "bucket_pool": 2})
    data = DistillData(entries, config, batch_seconds=3.0, seed=3)
    seen, starts = {}, []
    for _, (micro,) in zip(range(data.steps_in_epoch(0)), data):
        for row, crop in enumerate(micro["crops"]):
            entry = entries[crop.index]
            name = Path(entry.path).name
            sr, channels, tones = FILES[name]
            n = int(micro["lens"][row])
            assert n == crop.samples == math.ceil(crop.frames * 16000 / sr), name  # the planner's length is the real one
            got = micro["wavs"][row, :n].double().numpy()
            assert not micro["wavs"][row, n:].any()
            times = crop.start / sr + np.arange(n) / 16000  # the crop's first sample is its start in the file
            want = signal(times, tones).mean(axis=1)  # the mean of the channels
            inner = slice(48, n - 48)  # the resampler's windowed sinc reaches 6 zero crossings past each end
            err = np.abs(got[inner] - want[inner]).max()
            assert err < (1e-3 if sr != 16000 else 1e-6), (name, crop.start, err)
            seen[name] = seen.get(name, 0) + 1
            starts.append(crop.start)
            if channels == 2:  # neither channel alone is what the student hears
                assert np.abs(got[inner] - signal(times, tones)[inner, 0]).max() > 0.1
    assert set(seen) == set(FILES)
    assert sum(s > 0 for s in starts) >= 3  # random crops: the time offset of a crop is checked too
