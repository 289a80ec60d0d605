"""Where the raw material comes from: Debian packages (installed on demand), synthetic voices,
and inventories of the real recordings those packages ship (with their licences)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# Debian package -> (what it gives, licence as stated in its copyright file)
PACKAGES: dict[str, tuple[str, str]] = {
    "espeak-ng": ("speech synthesizer, English accents x voice variants", "GPL-3+"),
    "flite": ("speech synthesizer (voices kal16, awb, rms, slt) and t2p (CMU-lexicon phones)", "BSD-style (CMU / Edinburgh), some files GPL-2"),
    "fluidsynth": ("SoundFont synthesizer", "LGPL-2.1+"),
    "timgm6mb-soundfont": ("TimGM6mb General MIDI soundfont (training instruments)", "GPL-2 / GPL-3+"),
    "musescore-general-soundfont-small": ("MuseScore_General_Lite soundfont (held-out test instruments)", "MIT"),
    "fluid-soundfont-gm": ("FluidR3_GM soundfont (more training instruments)", "MIT"),
    "asterisk-core-sounds-en-wav": ("real recorded English prompts, one female speaker (Allison), 8 kHz", "CC-BY-SA-3.0"),
    "tuxpaint-stamps-default": ("real recordings: read descriptions in ~20 languages, digits, animal/household sounds", "GPL-2"),
    "qabcs-data": ("real recordings: animal, instrument, vehicle and object sounds", "GPL-3+ / MIT / CC0-1.0 / public domain (per file)"),
    "hydrogen-drumkits": ("real multi-velocity drum hits from 14 kits", "GPL-2+ / CC-BY-3.0 / CC-BY-SA-3.0 / CC0 (per kit)"),
    "hedgewars-data": ("real recorded voice packs (game character voices)", "GPL-2 / GFDL-1.3 / MIT (per file)"),
}

BASE_PACKAGES = (
    "espeak-ng", "flite", "fluidsynth", "timgm6mb-soundfont", "musescore-general-soundfont-small",
    "asterisk-core-sounds-en-wav", "tuxpaint-stamps-default", "qabcs-data", "hydrogen-drumkits",
)
EXTRA_PACKAGES = ("fluid-soundfont-gm", "hedgewars-data")

TUX = Path("/usr/share/tuxpaint/stamps")
ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
QABCS = Path("/usr/share/qabcs/abcs")
HYDROGEN = Path("/usr/share/hydrogen/data/drumkits")
HEDGEWARS = Path("/usr/share/games/hedgewars/Data/Sounds/voices")
SOUNDFONTS = {
    "TimGM6mb": Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    "FluidR3_GM": Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    "MuseScore_General_Lite": Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"),
}


def packages_for(size: str) -> tuple[str, ...]:
    """The test size needs only the base set; mini and small add more voices and instruments."""
    return BASE_PACKAGES if size == "test" else BASE_PACKAGES + EXTRA_PACKAGES


def missing_packages(names: tuple[str, ...]) -> list[str]:
    if shutil.which("dpkg-query") is None:
        raise ValueError("dpkg-query not found: the corpora are built from Debian packages (Debian/Ubuntu only)")
    missing = []
    for name in names:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True)
        if "install ok installed" not in proc.stdout:
            missing.append(name)
    return missing


APT_LOCK = Path("/var/lock/usad-apt.lock")  # USAD_APT_LOCK overrides it
APT_LOCK_TIMEOUT = 1800.0  # seconds to wait for another build's install (the full set takes minutes)


@contextlib.contextmanager
def apt_lock(timeout: float = APT_LOCK_TIMEOUT) -> Iterator[None]:
    """Exclusive right to run apt-get among usad processes: two corpora builds started at once
    (the demo's corpora and pool stages) would otherwise both run apt and one die on apt's own
    lock. Waits up to `timeout` s, then names the holder. An flock, so a killed holder frees it."""
    path = Path(os.environ.get("USAD_APT_LOCK", APT_LOCK))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline, said = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                if time.monotonic() >= deadline:
                    raise ValueError(
                        f"waited {timeout:.0f} s for {path}, held by process {holder} (another `usad corpora build` "
                        f"installing Debian packages): let it finish or stop it, then run this again"
                    ) from None
                if not said:
                    log.info("waiting for %s: process %s is installing Debian packages", path, holder)
                    said = True
                time.sleep(0.5)
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_packages(names: tuple[str, ...], install: bool = True, lock_timeout: float = APT_LOCK_TIMEOUT) -> float:
    """Install what is missing when root (and `install`); otherwise raise with the exact apt
    command. Returns the seconds spent waiting and installing.

    apt runs under `apt_lock`, and what is missing is decided again once the lock is held, so a
    build that waited for another one's install finds the packages there and runs no apt at all.
    """
    missing = missing_packages(names)
    if not missing:
        return 0.0
    command = "apt-get update && apt-get install -y --no-install-recommends " + " ".join(missing)
    if os.geteuid() != 0 or not install:
        raise ValueError(f"missing Debian packages {missing}; run as root: sudo sh -c '{command}'")
    start = time.time()
    with apt_lock(lock_timeout):
        missing = missing_packages(names)
        if missing:
            log.info("installing %s", " ".join(missing))
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            wait = ["-o", f"DPkg::Lock::Timeout={int(lock_timeout)}"]  # apt also waits for non-usad apt/dpkg runs
            for cmd in (["apt-get", *wait, "update"], ["apt-get", *wait, "install", "-y", "--no-install-recommends", *missing]):
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise ValueError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
    return time.time() - start


# ----------------------------------------------------------------------------- synthetic voices
@dataclass(frozen=True)
class Voice:
    """A synthetic speaker: engine + parameters. `name` is stable and human-readable."""

    name: str
    engine: str  # espeak | flite
    voice: str
    pitch: int = 50
    speed: int = 160
    gender: str = "M"

    def speak(self, text: str) -> "np.ndarray":
        """16 kHz mono float32, leading/trailing silence trimmed."""
        from . import audio

        if self.engine == "flite":
            return audio.flite(text, self.voice)
        return audio.espeak(text, self.voice, self.pitch, self.speed)


ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
FLITE_VOICES = {"kal16": "M", "awb": "M", "rms": "M", "slt": "F"}


def voice_pool(seed: int) -> list[Voice]:
    """All synthetic voices in a seed-determined order (84 espeak-ng accent x variant voices with
    a per-voice pitch and rate, plus 4 flite voices). Splits take disjoint slices of this list."""
    import random

    rng = random.Random(f"voices-{seed}")
    voices = [Voice(f"flite-{v}", "flite", v, gender=g) for v, g in FLITE_VOICES.items()]
    for accent in ESPEAK_ACCENTS:
        for variant in ESPEAK_VARIANTS:
            pitch, speed = rng.randint(25, 75), rng.randint(135, 190)
            voices.append(Voice(f"espeak-{accent}-{variant}", "espeak", f"{accent}+{variant}", pitch, speed, variant[0].upper()))
    rng.shuffle(voices)
    return voices


# ----------------------------------------------------------------------------- text and phones
_FLITE_VOWELS = {"aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw"}


def phone_vocabulary() -> list[str]:
    """The 71-token phone set of s3prl's libriphone recipe (vocab/phoneme.txt)."""
    vowels = ["AA", "AE", "AH", "AO", "AW", "AY"]
    later_vowels = ["EH", "ER", "EY"]
    return (
        ["SIL", "SPN"]
        + [f"{v}{s}" for v in vowels for s in "012"]
        + ["B", "CH", "D", "DH"]
        + [f"{v}{s}" for v in later_vowels for s in "012"]
        + ["F", "G", "HH"]
        + [f"{v}{s}" for v in ("IH", "IY") for s in "012"]
        + ["JH", "K", "L", "M", "N", "NG"]
        + [f"{v}{s}" for v in ("OW", "OY") for s in "012"]
        + ["P", "R", "S", "SH", "T", "TH"]
        + [f"{v}{s}" for v in ("UH", "UW") for s in "012"]
        + ["V", "W", "Y", "Z", "ZH"]
    )


def flite_phones(word: str) -> list[str]:
    """ARPAbet-with-stress pronunciation from flite's CMU lexicon + letter-to-sound rules (t2p):
    the same front end that drives the flite voices. Spoken alone, the article "a" is read as
    the letter name; in running text it is reduced, as LibriSpeech's lexicon gives it first."""
    if word.lower() == "a":
        return ["AH0"]
    proc = subprocess.run(["t2p", word.lower()], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"t2p failed for {word!r}: {proc.stderr.strip()}")
    phones = []
    for token in proc.stdout.split():
        if token == "pau":
            continue
        if token == "ax":
            phones.append("AH0")
        elif token == "axr":
            phones.append("ER0")
        elif token[:-1] in _FLITE_VOWELS and token[-1].isdigit():
            phones.append(token[:-1].upper() + token[-1])
        elif token in _FLITE_VOWELS:
            phones.append(token.upper() + "0")
        else:
            phones.append(token.upper())
    unknown = [p for p in phones if p not in phone_vocabulary()]
    if unknown or not phones:
        raise ValueError(f"t2p gave phones outside the libriphone set for {word!r}: {proc.stdout.strip()}")
    return phones


def normalize_text(text: str) -> str:
    """LibriSpeech transcript style: upper case, letters and apostrophes only."""
    text = re.sub(r"[^A-Za-z' ]+", " ", text.replace("-", " ")).upper()
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))


@lru_cache(maxsize=None)
def tuxpaint_sentences() -> dict[str, str]:
    """stamp path stem -> English description (first line of each stamp's .txt)."""
    out = {}
    for txt in sorted(TUX.rglob("*.txt")):
        try:
            first = txt.read_text(encoding="utf-8", errors="replace").splitlines()[0]
        except IndexError:
            continue
        if "=" in first or re.search(r"\d", first):
            continue
        norm = normalize_text(first)
        if norm:
            out[str(txt.with_suffix(""))] = norm
    return out


def tuxpaint_english_readings() -> list[tuple[Path, str]]:
    """Real read English descriptions (<stamp>_desc.ogg) with their text: one real speaker."""
    sentences = tuxpaint_sentences()
    out = []
    for ogg in sorted(TUX.rglob("*_desc.ogg")):
        stem = str(ogg)[: -len("_desc.ogg")]
        if stem in sentences:
            out.append((ogg, sentences[stem]))
    return out


TUX_LANGS = ("be", "bg", "ca", "da", "el", "es", "fr", "ro", "ru")


def tuxpaint_readers() -> dict[str, list[Path]]:
    """Real read descriptions per language; each language is read by (about) one person."""
    out: dict[str, list[Path]] = {}
    for lang in TUX_LANGS:
        out[f"tuxpaint-{lang}"] = sorted(TUX.rglob(f"*_desc_{lang}.ogg"))
    return out


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def real_digits() -> dict[str, list[tuple[str, Path]]]:
    """Real spoken English digits: speaker -> [(word, file)] (asterisk Allison; tuxpaint's
    default English and en_GB readers)."""
    speakers: dict[str, list[tuple[str, Path]]] = {"asterisk-allison": [], "tuxpaint-en": [], "tuxpaint-en_GB": []}
    for i, word in enumerate(DIGIT_WORDS):
        for speaker, path in (
            ("asterisk-allison", ASTERISK / "digits" / f"{i}.wav"),
            ("tuxpaint-en", TUX / "symbols" / "math" / f"{i}.ogg"),
            ("tuxpaint-en_GB", TUX / "symbols" / "math" / f"{i}_en_GB.ogg"),
        ):
            if path.is_file():
                speakers[speaker].append((word, path))
    return {k: v for k, v in speakers.items() if v}


def asterisk_prompts() -> list[Path]:
    """All real prompts of the asterisk speaker except silence files."""
    return sorted(p for p in ASTERISK.rglob("*.wav") if p.parent.name != "silence")


def hedgewars_packs() -> dict[str, list[Path]]:
    """Real voice packs (one voice actor per pack) -> their phrase recordings."""
    if not HEDGEWARS.is_dir():
        return {}
    return {
        f"hedgewars-{d.name}": sorted(d.glob("*.ogg"))
        for d in sorted(HEDGEWARS.iterdir())
        if d.is_dir() and len(list(d.glob("*.ogg"))) >= 20
    }


# ----------------------------------------------------------------------------- environmental sounds
QABCS_CATEGORY = {"animals": "animal", "instrument": "musical_instrument", "toys": "toy_object", "misc": None}
VEHICLE_WORDS = ("airplane", "bicycle", "bus", "car", "helicopter", "motorcycle", "train", "tractor", "truck", "ship", "boat", "submarine", "rocket", "scooter", "tram", "taxi", "jeep", "van", "yacht", "zeppelin", "ambulance", "firetruck", "police", "excavator", "bulldozer")
TUX_CATEGORY = {"animals": "animal", "household": "machine", "vehicles": "machine", "hobbies/music": "musical_instrument"}


def real_sound_events() -> dict[Path, str]:
    """Real environmental recordings -> super-category (animal, musical_instrument, machine
    (vehicles and household appliances), toy_object). Categories come from qabcs' own item categories and tuxpaint's stamp
    folders; uncategorized files are left for the unlabeled pool."""
    labels: dict[Path, str] = {}
    noises = QABCS / "all" / "noises"
    for meta in sorted(QABCS.glob("*/abc*.json")):
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        for entry in data.get("letters", []):
            for letter in entry.values():
                for category, item in letter.items():
                    if not isinstance(item, dict) or "noises" not in item:
                        continue
                    path = noises / item["noises"]
                    label = QABCS_CATEGORY.get(category)
                    if category == "misc" and any(w in item["noises"].lower() for w in VEHICLE_WORDS):
                        label = "machine"
                    if label and path.is_file():
                        labels.setdefault(path, label)
    for ogg in sorted(TUX.rglob("*.ogg")):
        if re.search(r"_(desc_)?[a-z]{2,3}(_[A-Z]{2})?\.ogg$", ogg.name) or ogg.name.endswith("_desc.ogg"):
            continue
        rel = ogg.relative_to(TUX).as_posix()
        for prefix, label in TUX_CATEGORY.items():
            if rel.startswith(prefix + "/"):
                labels.setdefault(ogg, label)
    return labels


def unlabeled_sounds() -> list[Path]:
    """Real sound files that no evaluation task uses (for the distillation pool)."""
    used = set(real_sound_events())
    tux = [p for p in sorted(TUX.rglob("*.ogg")) if not re.search(r"_(desc_)?[a-z]{2,3}(_[A-Z]{2})?\.ogg$", p.name)
           and not p.name.endswith("_desc.ogg") and p not in used and p.parent.name != "math"]
    qabcs = [p for p in sorted((QABCS / "all" / "noises").glob("*.ogg")) if p not in used]
    return tux + qabcs


DRUM_CLASSES = ("kick", "snare", "hihat", "tom", "cymbal", "clap")
_DRUM_PATTERNS = (
    ("kick", r"kick|\bbd\b|bass ?drum"),
    ("snare", r"snare|\bsd\b|rim"),
    ("hihat", r"hi.?hat|\bhh\b|hat|\bchh\b|\bohh\b"),
    ("tom", r"\btom"),
    ("cymbal", r"crash|ride|cymbal|china|splash"),
    ("clap", r"clap"),
)


def drum_hits() -> dict[str, list[tuple[Path, str]]]:
    """Hydrogen kits -> [(sample file, drum class)], classes read from each drumkit.xml
    instrument name (all velocity layers of an instrument are kept)."""
    kits: dict[str, list[tuple[Path, str]]] = {}
    for xml in sorted(HYDROGEN.glob("*/drumkit.xml")):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError:
            continue
        hits = []
        for inst in root.iter():
            if not inst.tag.endswith("instrument"):
                continue
            name = next((c.text or "" for c in inst if c.tag.endswith("name")), "").lower()
            label = next((lab for lab, pat in _DRUM_PATTERNS if re.search(pat, name)), None)
            if label is None:
                continue
            for node in inst.iter():
                if node.tag.endswith("filename") and node.text:
                    path = xml.parent / node.text
                    if path.is_file():
                        hits.append((path, label))
        if len({lab for _, lab in hits}) >= 3:
            kits[xml.parent.name] = sorted(set(hits))
    return kits


def licence_table(names: "tuple[str, ...] | list[str]") -> str:
    """Markdown rows: package, what it gives, licence."""
    rows = ["| Debian package | used for | licence |", "|---|---|---|"]
    rows += [f"| {n} | {PACKAGES[n][0]} | {PACKAGES[n][1]} |" for n in names]
    return "\n".join(rows)
