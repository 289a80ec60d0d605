"""Build a reduced corpus set (size `test`) and validate it with s3prl's and heareval's own
loaders; plus the properties the benchmark relies on (disjoint voices/kits/folds, real audio in
test splits, determinism, resumability)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from math import gcd
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from downstream_recipes.corpora import build, check, fluent, sources
from downstream_recipes.corpora.common import SIZES
from downstream_recipes.corpora.speech_commands import which_set
from downstream_recipes.corpora.voxceleb import real_speakers


def _why_no_packages() -> "str | None":
    """Why the corpora cannot be built here (None: they can), for the skip line of each test."""
    if shutil.which("dpkg-query") is None:
        return "needs a Debian/Ubuntu system: the corpora are built from Debian packages (no dpkg-query here)"
    missing = sources.missing_packages(sources.packages_for("test"))
    if missing and os.geteuid() != 0:
        return f"needs Debian packages {' '.join(missing)}: run as root, or apt-get install them"
    return None


def _why_no_loaders() -> "str | None":
    missing = [m for m in ("s3prl", "heareval") if importlib.util.find_spec(m) is None]
    return f"needs {' and '.join(missing)} (make setup installs them)" if missing else None


NO_PACKAGES, NO_LOADERS = _why_no_packages(), _why_no_loaders()
needs_packages = pytest.mark.skipif(NO_PACKAGES is not None, reason=str(NO_PACKAGES))
needs_loaders = pytest.mark.skipif(NO_LOADERS is not None, reason=str(NO_LOADERS))


def at_16k(path: "str | Path", seconds: "float | None" = None) -> np.ndarray:
    """A source recording as 16 kHz mono, decoded and resampled here (soundfile + scipy's polyphase
    resampler), not with the builders' own audio code."""
    from scipy.signal import resample_poly

    info = sf.info(str(path))
    frames = -1 if seconds is None else int(seconds * info.samplerate)
    x, sr = sf.read(str(path), frames=frames, dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    g = gcd(16000, sr)
    return x if sr == 16000 else resample_poly(x, 16000 // g, sr // g)


def match(a: np.ndarray, b: np.ndarray, min_overlap: int) -> float:
    """Best normalised cross-correlation of `a` and `b` over every shift where they overlap by at
    least `min_overlap` samples, each side normalised over the overlap: ~1 where one recording
    holds the other up to gain (and resampling), well below for different recordings."""
    from scipy.signal import correlate

    n, m = len(a), len(b)
    c = correlate(b, a, mode="full", method="fft")
    lags = np.arange(-(n - 1), m)
    lo, hi = np.maximum(0, -lags), np.minimum(n, m - lags)
    ca, cb = np.concatenate([[0.0], np.cumsum(a * a)]), np.concatenate([[0.0], np.cumsum(b * b)])
    ea, eb = ca[hi] - ca[lo], cb[hi + lags] - cb[lo + lags]
    ok = (hi - lo >= min_overlap) & (ea > 1e-6) & (eb > 1e-6)
    return float((c[ok] / np.sqrt(ea[ok] * eb[ok])).max()) if ok.any() else 0.0


# The corpora of PR/KS/SID/IC, HEAR and the distillation pool; the other SUPERB tasks' corpora
# are built and checked in tests/test_superb_tasks.py.
STAGES = ["librispeech", "speech_commands", "voxceleb1", "fluent_speech_commands", "hear", "pool"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if NO_PACKAGES is not None:
        pytest.skip(NO_PACKAGES)
    out = tmp_path_factory.mktemp("corpora")
    build.build_corpora(out, size="test", seed=0, stages=STAGES)
    return out


@needs_loaders
def test_check_passes_with_real_loaders(corpora: Path) -> None:
    results = check.check_corpora(corpora)  # every built stage
    assert set(results) == set(STAGES)
    assert "keywords" in results["hear"] and "sound_events (new_split_kfold)" in results["hear"]


def test_rebuild_is_skipped_and_other_params_refused(corpora: Path) -> None:
    before = (corpora / "LibriSpeech" / "SPEAKERS.TXT").stat().st_mtime_ns
    timings = build.build_corpora(corpora, size="test", seed=0, stages=["librispeech"])
    assert timings["librispeech"] == 0.0
    assert (corpora / "LibriSpeech" / "SPEAKERS.TXT").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="was built with"):
        build.build_corpora(corpora, size="test", seed=1, stages=["librispeech"])


def test_same_seed_same_corpus(corpora: Path, tmp_path: Path) -> None:
    build.build_corpora(tmp_path, size="test", seed=0, stages=["fluent_speech_commands"])
    a = corpora / "fluent_speech_commands"
    b = tmp_path / "fluent_speech_commands"
    assert (a / "data" / "train_data.csv").read_text() == (b / "data" / "train_data.csv").read_text()
    for wav in sorted(a.rglob("*.wav"))[:3]:
        assert hashlib.sha1(wav.read_bytes()).digest() == hashlib.sha1((b / wav.relative_to(a)).read_bytes()).digest()


def test_speech_commands_test_voices_disjoint_and_real_digits(corpora: Path) -> None:
    root = corpora / "speech_commands"
    speaker = lambda p: re.sub(r"_nohash_.*$", "", p.name)  # noqa: E731
    train = {speaker(p) for p in (root / "speech_commands_v0.01").glob("*/*_nohash_*.wav")}
    test = {speaker(p) for p in (root / "speech_commands_test_set_v0.01").glob("*/*_nohash_*.wav")}
    assert train and test and not train & test
    assert which_set("3cfc6b3a_nohash_2.wav") == which_set("3cfc6b3a_nohash_0.wav")
    # the audio itself: the test root's _unknown_ class holds real recorded digits (two per real
    # speaker at this size) from the installed packages, beside synthetic words that match none
    digits = {(speaker, word): at_16k(path) for speaker, items in sources.real_digits().items() for word, path in items}
    assert {speaker for speaker, _ in digits} == {"asterisk-allison", "tuxpaint-en", "tuxpaint-en_GB"}
    found: dict[str, int] = {}
    synthetic = []
    for clip_path in sorted((root / "speech_commands_test_set_v0.01" / "_unknown_").glob("*.wav")):
        clip, sr = sf.read(clip_path, dtype="float64")
        assert sr == 16000
        score, (speaker, word) = max((match(clip, wav, 4800), key) for key, wav in digits.items())
        if score > 0.95:
            found[speaker] = found.get(speaker, 0) + 1
            assert clip_path.stem.endswith(f"_nohash_{word}"), (clip_path.name, word)
        else:
            synthetic.append(score)
    assert found == {"asterisk-allison": 2, "tuxpaint-en": 2, "tuxpaint-en_GB": 2}, found
    assert synthetic and max(synthetic) < 0.8, synthetic


def test_hear_layout_and_splits(corpora: Path) -> None:
    tasks = corpora / "hear" / "tasks"
    assert sorted(p.name for p in tasks.iterdir()) == ["drums", "event_detection", "instrument_family", "keywords", "pitch", "sound_events"]
    pitch = json.loads((tasks / "pitch" / "task_metadata.json").read_text())
    assert pitch["evaluation"][0] == "pitch_acc"
    test_files = json.loads((tasks / "pitch" / "test.json").read_text())
    assert test_files and all(name.startswith("MuseScore_General_Lite_") for name in test_files)
    train_files = json.loads((tasks / "pitch" / "train.json").read_text())
    assert not any(name.startswith("MuseScore") for name in train_files)
    # sound events: every source file's crops sit in exactly one fold
    owner: dict[str, str] = {}
    for fold in json.loads((tasks / "sound_events" / "task_metadata.json").read_text())["splits"]:
        for name in json.loads((tasks / "sound_events" / f"{fold}.json").read_text()):
            source = name.rsplit("_", 1)[0]
            assert owner.setdefault(source, fold) == fold
    assert len(set(owner.values())) == 5
    # drums: kits disjoint between train and test
    kit = lambda n: n.split("_")[0]  # noqa: E731
    drum_train = {kit(n) for n in json.loads((tasks / "drums" / "train.json").read_text())}
    drum_test = {kit(n) for n in json.loads((tasks / "drums" / "test.json").read_text())}
    assert drum_test and not drum_train & drum_test
    events = json.loads((tasks / "event_detection" / "test.json").read_text())
    first = next(iter(events.values()))[0]
    assert set(first) == {"label", "start", "end"} and first["end"] > first["start"]
    assert "instrument_family" in (corpora / "hear" / "README.md").read_text()


def test_real_speakers_present(corpora: Path) -> None:
    """The audio, not the datasheets: test-clean holds Tux Paint's real English readings (found by
    their text in the transcripts), and two VoxCeleb1 speakers are real readers whose utterances
    start with one of their own recordings."""
    transcripts = {}
    for trans in (corpora / "LibriSpeech" / "test-clean").rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            transcripts[trans.parent / f"{uid}.flac"] = text
    readings, real_utts = [], set()
    for path, text in sources.tuxpaint_english_readings():
        holders = [utt for utt, words in transcripts.items() if text in words]
        if holders:
            (utt,) = holders
            readings.append(at_16k(path))
            assert match(readings[-1], sf.read(utt, dtype="float64")[0], 8000) > 0.95, (path, utt)
            real_utts.add(utt)
    assert len(readings) >= 6 and len(real_utts) == 3  # three real utterances of two or three readings each
    other = sf.read(sorted(set(transcripts) - real_utts)[0], dtype="float64")[0]  # a synthetic voice's
    assert max(match(r, other, 8000) for r in readings) < 0.8
    speakers = sorted((corpora / "VoxCeleb1" / "dev" / "wav").iterdir())
    probes = {s.name: sf.read(sorted(s.rglob("*.wav"))[0], dtype="float64")[0][:6400] for s in speakers}
    real: dict[str, list[str]] = {}
    for name, files in list(real_speakers().items())[: SIZES["test"].sid_real]:
        heads = [at_16k(p, seconds=1.5) for p in files]
        for sid, probe in probes.items():
            if max(match(probe, head, 4800) for head in heads) > 0.95:
                real.setdefault(sid, []).append(name)
    assert len(real) == SIZES["test"].sid_real and sorted(len(v) for v in real.values()) == [1, 1], real
    assert len({v[0] for v in real.values()}) == SIZES["test"].sid_real and len(probes) > len(real)


def test_pool_manifest_format(corpora: Path) -> None:
    lines = (corpora / "pool" / "manifest.tsv").read_text().splitlines()
    assert lines[0] == "path\tnum_samples\tsample_rate\tdomain"
    assert all(Path(line.split("\t")[0]).is_file() for line in lines[1:])


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg-query (a Debian/Ubuntu system)")
def test_missing_corpus_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not built"):
        check.check_corpora(tmp_path)
    with pytest.raises(ValueError, match="unknown size"):
        build.build_corpora(tmp_path, size="huge")
    with pytest.raises(ValueError, match="apt-get install -y --no-install-recommends usad-no-such-package"):
        sources.ensure_packages(("espeak-ng", "usad-no-such-package"), install=False)


@needs_packages
def test_demo_ic_splits_resolve_half_a_point(tmp_path: Path) -> None:
    """The demo's IC verdict once followed single utterances (48 per split); at size mini every
    valid/test voice now says every intent, ~200 utterances per split."""
    fluent.build(tmp_path, SIZES["mini"], seed=0)
    splits = {s: pd.read_csv(tmp_path / "data" / f"{s}_data.csv") for s in ("train", "valid", "test")}
    for split in ("valid", "test"):
        frame = splits[split]
        assert len(frame) >= 200, (split, len(frame))
        intents = (frame.action + "|" + frame.object + "|" + frame.location).groupby(frame.speakerId).nunique()
        assert (intents == len(fluent.INTENTS)).all(), intents
    assert not set(splits["test"].speakerId) & (set(splits["train"].speakerId) | set(splits["valid"].speakerId))


@needs_packages
def test_lexicon_uses_libriphone_phones() -> None:
    vocab = sources.phone_vocabulary()
    assert len(vocab) == 71 and vocab[:2] == ["SIL", "SPN"]
    assert sources.flite_phones("wombat") == ["W", "AA1", "M", "B", "AE0", "T"]
    assert sources.flite_phones("a") == ["AH0"]


def test_demo_distills_on_teacher_training_audio_but_no_dev_or_test_file(corpora: Path, tmp_path: Path) -> None:
    import csv

    from downstream_recipes.demo.teachers import teacher_training_audio
    from usad_upstream.distill.data import read_manifest

    manifest = read_manifest(teacher_training_audio(corpora, tmp_path / "seen.tsv"))
    seen = {Path(e.path).resolve() for e in manifest}
    assert {e.domain for e in manifest} == {"speech", "sound", "music"}
    held_out = set((corpora / "LibriSpeech").glob("[dt]e[vs]t-clean/**/*.flac"))  # dev-clean, test-clean
    held_out |= set((corpora / "speech_commands").rglob("*.wav")) - {
        p for p in (corpora / "speech_commands" / "speech_commands_v0.01").glob("*/*.wav") if which_set(p.name) == "training"}
    for split in ("valid", "test"):
        with open(corpora / "fluent_speech_commands" / "data" / f"{split}_data.csv", newline="") as handle:
            held_out |= {corpora / "fluent_speech_commands" / row["path"] for row in csv.DictReader(handle)}
    for line in (corpora / "VoxCeleb1" / "iden_split.txt").read_text().splitlines():
        split, rel = line.split()
        held_out |= set((corpora / "VoxCeleb1").glob(f"*/wav/{rel}")) if split != "1" else set()
    held_out |= {p for p in (corpora / "hear" / "tasks").glob("*/16000/*/*") if p.parent.name != "train"}
    assert len(held_out) > 50 and not seen & {p.resolve() for p in held_out}
    assert all(Path(p).is_file() for p in seen)


@pytest.mark.timeout(300)
def test_demo_teacher_is_the_same_for_the_same_seed(corpora: Path, tmp_path: Path) -> None:
    """Two processes (fresh RNG state each, as two demo runs) train identical teachers: runs of
    the demo differ only where the seed or the machine's arithmetic differs."""

    def train(name: str, seed: int) -> dict:
        out = tmp_path / f"{name}.ckpt"
        cmd = [sys.executable, "-m", "downstream_recipes.cli", "demo", "teacher", "audio", "--corpora", str(corpora),
               "-o", str(out), "--steps", "3", "--batch", "2", "--seed", str(seed), "--threads", "1"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return torch.load(out, map_location="cpu", weights_only=False)["state_dict"]

    first, again, other = train("a", 0), train("b", 0), train("c", 1)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
