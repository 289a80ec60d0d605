"""Speech Commands v0.01-format corpus for KS (s3prl speech_commands recipe).

  <root>/speech_commands_v0.01/<word>/<speaker>_nohash_<n>.wav, validation_list.txt,
      testing_list.txt, _background_noise_/*.wav            -> datarc.speech_commands_root
  <root>/speech_commands_test_set_v0.01/<12 classes>/*.wav -> datarc.speech_commands_test_root

Test voices are disjoint from the training root's voices; the test root's _unknown_ class holds
REAL recorded digits (asterisk, Tux Paint) and its _silence_ class real appliance recordings.
"""
from __future__ import annotations

import hashlib
import random
import re
import zlib
from pathlib import Path

import numpy as np

from . import audio, sources
from .common import Size, audio_stats, fmt_hours, pmap, table, write_datasheet

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# Speech Commands' auxiliary words, digits interleaved with the others so that any prefix mixes both
_OTHER_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
UNKNOWN_WORDS = tuple(w for pair in zip(sources.DIGIT_WORDS, _OTHER_WORDS) for w in pair)
MAX_PER_CLASS = 2**27 - 1  # from the Speech Commands README's which_set()


def which_set(filename: str, validation_pct: float = 10.0, testing_pct: float = 10.0) -> str:
    """The dataset's published split rule: a hash of the speaker part of the name, so every
    recording of one speaker lands in the same set (s3prl applies the same rule)."""
    speaker = re.sub(r"_nohash_.*$", "", filename)
    digest = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    pct = (digest % (MAX_PER_CLASS + 1)) * (100.0 / MAX_PER_CLASS)
    if pct < validation_pct:
        return "validation"
    if pct < validation_pct + testing_pct:
        return "testing"
    return "training"


def _speaker_hash(name: str, seed: int, want: str = "") -> str:
    """An 8-hex speaker id; with `want`, the first one whose which_set() is that set, so the
    validation list is never empty however few voices there are."""
    for k in range(10000):
        h = hashlib.sha1(f"{name}-{seed}-{k}".encode()).hexdigest()[:8]
        if not want or which_set(f"{h}_nohash_0.wav") == want:
            return h
    raise ValueError(f"no speaker id for {name} falls in the {want} set")


def build(root: Path, size: Size, seed: int) -> None:
    rng = random.Random(f"speech-commands-{seed}")
    nrng = np.random.default_rng(seed)
    voices = sources.voice_pool(seed + 1)
    n_train, n_test = size.ks_voices
    train_voices, test_voices = voices[:n_train], voices[n_train : n_train + n_test]
    unknown = list(UNKNOWN_WORDS[: size.ks_unknown_words])
    train_root = root / "speech_commands_v0.01"
    test_root = root / "speech_commands_test_set_v0.01"

    jobs: list[tuple[Path, "sources.Voice | Path", str]] = []  # out path, source, word
    # as in the dataset: ~10% validation and ~10% testing speakers (testing_list.txt is what
    # other loaders use; s3prl discards it and tests on the separate test root)
    n_valid = max(1, round(0.1 * len(train_voices)))
    n_testing = round(0.1 * len(train_voices)) if len(train_voices) >= 10 else 0
    for i, voice in enumerate(train_voices):
        want = "validation" if i < n_valid else "testing" if i < n_valid + n_testing else "training"
        h = _speaker_hash(voice.name, seed, want)
        for word in KEYWORDS + tuple(unknown):
            jobs.append((train_root / word / f"{h}_nohash_0.wav", voice, word))
    for voice in test_voices:
        h = _speaker_hash(voice.name, seed)
        for word in KEYWORDS:
            jobs.append((test_root / word / f"{h}_nohash_0.wav", voice, word))
        for word in rng.sample(unknown, min(len(unknown), 3)):
            jobs.append((test_root / "_unknown_" / f"{h}_nohash_{word}.wav", voice, word))
    real_digits = sources.real_digits()
    for speaker, items in real_digits.items():
        h = _speaker_hash(speaker, seed)
        take = items if size.name != "test" else rng.sample(items, 2)
        for word, path in take:
            jobs.append((test_root / "_unknown_" / f"{h}_nohash_{word}.wav", path, word))

    def render(job: tuple[Path, "sources.Voice | Path", str]) -> np.ndarray:
        out, src, word = job
        wav = audio.load(src) if isinstance(src, Path) else src.speak(word)
        return audio.fit(audio.normalize(audio.trim(wav)), audio.SR, np.random.default_rng(zlib.crc32(f"{out.parent.parent.name}/{out.parent.name}/{out.name}".encode())))

    for (out, _, _), wav in zip(jobs, pmap(render, jobs, "speech commands")):
        audio.write(out, wav)

    # background noise: synthetic white/pink noise + real appliance recordings; the real ones
    # are split between the training root (_background_noise_) and the test root (_silence_)
    appliances = sorted(p for p, lab in sources.real_sound_events().items() if lab == "machine")
    rng.shuffle(appliances)
    half = max(1, len(appliances) // 2)
    bg = train_root / "_background_noise_"
    audio.write(bg / "white_noise.wav", audio.normalize(nrng.standard_normal(audio.SR * 10).astype(np.float32), 0.5))
    audio.write(bg / "pink_noise.wav", audio.pink_noise(audio.SR * 10, nrng))
    for path in appliances[half:]:
        wav = audio.normalize(audio.load(path), 0.5)
        audio.write(bg / f"{path.stem.lower()}.wav", np.tile(wav, int(np.ceil(audio.SR * 2 / max(len(wav), 1)))))
    n_sil = 0
    for path in appliances[:half]:
        wav = audio.normalize(audio.load(path), 0.5)
        for k in range(max(1, min(4, len(wav) // audio.SR))):
            audio.write(test_root / "_silence_" / f"{path.stem.lower()}_nohash_{k}.wav", audio.fit(wav[k * audio.SR :], audio.SR, nrng))
            n_sil += 1
    audio.write(test_root / "_silence_" / "pink_nohash_0.wav", audio.pink_noise(audio.SR, nrng) * 0.3)

    lists: dict[str, list[str]] = {"validation": [], "testing": []}
    for wav in sorted(train_root.glob("*/*.wav")):
        if wav.parent.name != "_background_noise_":
            which = which_set(wav.name)
            if which in lists:
                lists[which].append(f"{wav.parent.name}/{wav.name}")
    (train_root / "validation_list.txt").write_text("".join(f"{x}\n" for x in lists["validation"]))
    (train_root / "testing_list.txt").write_text("".join(f"{x}\n" for x in lists["testing"]))
    _datasheet(root, train_voices, test_voices, real_digits, unknown, lists)


def _datasheet(root: Path, train_voices: list, test_voices: list, real_digits: dict, unknown: list, lists: dict) -> None:
    rows = []
    for name in ("speech_commands_v0.01", "speech_commands_test_set_v0.01"):
        for cls in sorted(p.name for p in (root / name).iterdir() if p.is_dir()):
            n, h = audio_stats((root / name / cls).glob("*.wav"))
            rows.append((name, cls, n, fmt_hours(h)))
    write_datasheet(root / "README.md", "Speech Commands v0.01-format corpus (KS)", {
        "Contents": table(("root", "folder", "files", "duration"), rows),
        "Voices": (
            f"Training root: {len(train_voices)} synthetic voices ({', '.join(v.name for v in train_voices)}). "
            f"Test root: {len(test_voices)} other synthetic voices ({', '.join(v.name for v in test_voices)}) "
            f"plus REAL recorded digits (class _unknown_) from {', '.join(real_digits)}. "
            "Test _silence_ holds 1 s crops of real appliance recordings (Tux Paint household/vehicle "
            "sounds) that are not among the training root's _background_noise_ files."
        ),
        "Splits": (
            "Keywords are s3prl's 10 (yes no up down left right on off stop go); other words "
            f"({', '.join(unknown)}) map to _unknown_. In the training root, validation_list.txt and "
            "testing_list.txt follow the dataset's hash-of-speaker rule (the same rule s3prl applies), "
            f"giving {len(lists['validation'])} validation and {len(lists['testing'])} testing files; "
            "s3prl evaluates on the separate test root, whose voices never occur in the training root."
        ),
        "Sources and licences": sources.licence_table(("espeak-ng", "flite", "asterisk-core-sounds-en-wav", "tuxpaint-stamps-default", "qabcs-data")),
    })
