"""HEAR-format tasks (hear-eval-kit's on-disk layout, read by heareval's runners):

  <root>/tasks/<task>/task_metadata.json, labelvocabulary.csv (idx,label), <split>.json,
  <root>/tasks/<task>/16000/<split>/*.wav

Scene split JSONs map file -> [labels]; event split JSONs map file -> [{label, start, end}] in ms.
Tasks: keywords (speech-commands-like), pitch (NSynth-pitch-like, test soundfont unseen),
instrument_family (same renders + real instrument recordings in test), sound_events (real
recordings, 5 folds disjoint by source file), drums (hydrogen kits, disjoint by kit) and
event_detection (events placed in background noise, onset-based F-measure).
"""
from __future__ import annotations

import json
import random
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from . import audio, sources
from .common import Size, pmap, table, write_datasheet

VERSION = "usad-corpora-1"
TRAIN_FONTS = ("TimGM6mb", "FluidR3_GM")
TEST_FONT = "MuseScore_General_Lite"
FAMILIES = ("piano", "chromatic_percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed", "pipe", "synth_lead")
REAL_INSTRUMENTS = {
    "accordion": "organ", "organ": "organ", "cello": "strings", "violin": "strings", "viola": "strings",
    "double_bass": "strings", "harp": "strings", "clarinet": "reed", "saxophone": "reed", "oboe": "reed",
    "bassoon": "reed", "harmonica": "reed", "flute": "pipe", "recorder": "pipe", "piccolo": "pipe",
    "trumpet": "brass", "trombone": "brass", "tuba": "brass", "horn": "brass", "french_horn": "brass",
    "guitar": "guitar", "banjo": "guitar", "mandolin": "guitar", "ukulele": "guitar", "piano": "piano",
    "xylophone": "chromatic_percussion", "glockenspiel": "chromatic_percussion", "marimba": "chromatic_percussion",
    "vibraphone": "chromatic_percussion", "bass_guitar": "bass",
}
PITCH_RANGE = (36, 84)


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


class TaskWriter:
    """Writes one task: audio as it arrives, labels and metadata at the end."""

    def __init__(self, root: Path, name: str, meta: dict):
        self.dir = root / "tasks" / name
        self.meta = dict(meta, task_name=name, version=VERSION, sample_rate=audio.SR)
        self.labels: dict[str, dict] = {s: {} for s in meta["splits"]}

    def add(self, split: str, filename: str, wav: np.ndarray, label: object) -> None:
        duration = self.meta["sample_duration"]
        if duration is not None:
            wav = audio.fit(wav, int(duration * audio.SR), _rng(split, filename))
        audio.write(self.dir / str(audio.SR) / split / filename, wav)
        self.labels[split][filename] = label

    def finish(self, vocabulary: list[str], notes: dict[str, str]) -> dict[str, Counter]:
        for split, labels in self.labels.items():
            if not labels:
                raise ValueError(f"HEAR task {self.dir.name}: split {split} came out empty")
            (self.dir / f"{split}.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
        (self.dir / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{lab}\n" for i, lab in enumerate(vocabulary)))
        (self.dir / "task_metadata.json").write_text(json.dumps(self.meta, indent=2))
        counts = {s: Counter(_flat_labels(v)) for s, v in self.labels.items()}
        rows = [(s, len(self.labels[s]), ", ".join(f"{k} {n}" for k, n in sorted(c.items()))) for s, c in counts.items()]
        write_datasheet(self.dir / "README.md", f"HEAR task {self.dir.name}", {
            "Task": f"{self.meta['embedding_type']} / {self.meta['prediction_type']}, split_mode "
            f"{self.meta['split_mode']}, scores {', '.join(self.meta['evaluation'])}, clips of "
            f"{self.meta['sample_duration']} s at {audio.SR} Hz.",
            "Contents": table(("split", "files", "label counts"), rows), **notes,
        })
        return counts


def _flat_labels(split_labels: dict) -> Iterator[str]:
    for value in split_labels.values():
        for item in value:
            yield item["label"] if isinstance(item, dict) else item


def _scene(splits: list[str], duration: float, scores: list[str], split_mode: str = "trainvaltest") -> dict:
    return {"embedding_type": "scene", "prediction_type": "multiclass", "split_mode": split_mode,
            "sample_duration": duration, "evaluation": scores, "splits": splits}


# ----------------------------------------------------------------------------- tasks
def keywords(root: Path, ks_root: Path, seed: int) -> dict:
    """Speech-commands-like scene task over the KS corpus (test = its separate test root,
    which has disjoint voices and real recorded digits)."""
    from .speech_commands import KEYWORDS, which_set

    task = TaskWriter(root, "keywords", _scene(["train", "valid", "test"], 1.0, ["top1_acc"]))
    train_root, test_root = ks_root / "speech_commands_v0.01", ks_root / "speech_commands_test_set_v0.01"
    for wav in sorted(train_root.glob("*/*.wav")):
        word = wav.parent.name
        if word == "_background_noise_":
            clip = audio.load(wav)
            for k in range(min(3, len(clip) // audio.SR)):
                split = "valid" if k == 2 else "train"
                task.add(split, f"silence_{wav.stem}_{k}.wav", clip[k * audio.SR : (k + 1) * audio.SR], ["_silence_"])
            continue
        split = {"training": "train", "validation": "valid"}.get(which_set(wav.name))
        if split:
            task.add(split, f"{word}_{wav.name}", audio.load(wav), [word if word in KEYWORDS else "_unknown_"])
    for wav in sorted(test_root.glob("*/*.wav")):
        task.add("test", f"{wav.parent.name}_{wav.name}", audio.load(wav), [wav.parent.name])
    vocab = list(KEYWORDS) + ["_unknown_", "_silence_"]
    return task.finish(vocab, {"Sources": "Audio of the Speech Commands-format corpus (see ../../../speech_commands/README.md): "
                               "train/valid from its training root (hash split), test from its test root."})


def _notes(size: Size, seed: int, font: str) -> list[tuple[int, int, int]]:
    rng = random.Random(f"notes-{seed}-{font}")
    programs = [p for p in range(88) if p // 8 < len(FAMILIES)]
    n = size.notes_per_font if font != TEST_FONT else max(size.notes_per_font // 2, len(FAMILIES) * 2)
    return [(rng.choice(programs), rng.randint(*PITCH_RANGE), rng.randint(70, 120)) for _ in range(n)]


def music(root: Path, size: Size, seed: int) -> dict:
    """pitch and instrument_family from one set of fluidsynth renders; train/valid fonts vs a
    held-out test font; real instrument recordings join instrument_family's test split."""
    fonts = [f for f in TRAIN_FONTS if sources.SOUNDFONTS[f].is_file()]
    if not fonts:
        raise ValueError(f"no training soundfont found ({[str(sources.SOUNDFONTS[f]) for f in TRAIN_FONTS]})")
    pitch = TaskWriter(root, "pitch", dict(_scene(["train", "valid", "test"], 1.0, ["pitch_acc", "chroma_acc"]),
                                               pitch_range_min=PITCH_RANGE[0], pitch_range_max=PITCH_RANGE[1]))
    family = TaskWriter(root, "instrument_family", _scene(["train", "valid", "test"], 1.0, ["top1_acc"]))
    jobs = [(f, _notes(size, seed, f)) for f in fonts + [TEST_FONT]]
    renders = pmap(lambda job: audio.render_notes(sources.SOUNDFONTS[job[0]], job[1], 0.8, 1.2), jobs, "fluidsynth")
    for (font, notes), clips in zip(jobs, renders):
        for i, ((program, note, vel), clip) in enumerate(zip(notes, clips)):
            split = "test" if font == TEST_FONT else ("valid" if i % 8 == 7 else "train")
            if np.abs(clip).max() < 1e-4:
                continue  # a program this soundfont leaves silent
            name = f"{font}_{i:05d}_p{program:03d}_n{note:03d}_v{vel:03d}.wav"
            clip = audio.normalize(clip)
            pitch.add(split, name, clip, [str(note)])
            family.add(split, name, clip, [FAMILIES[program // 8]])
    real = []
    for path, label in sources.real_sound_events().items():
        if label == "musical_instrument" and path.stem.lower() in REAL_INSTRUMENTS:
            clip = audio.normalize(audio.trim(audio.load(path)))
            family.add("test", f"real_{path.stem.lower()}.wav", clip[: audio.SR], [REAL_INSTRUMENTS[path.stem.lower()]])
            real.append(path.name)
    src = {"Sources": f"fluidsynth renders of General MIDI programs 0-87 at MIDI pitch {PITCH_RANGE[0]}-{PITCH_RANGE[1]}, "
           f"0.8 s notes, random velocity. train/valid fonts: {', '.join(fonts)}; test font (unseen): {TEST_FONT}.\n\n"
           + sources.licence_table(("fluidsynth", "timgm6mb-soundfont", "fluid-soundfont-gm", "musescore-general-soundfont-small"))}
    counts = {"pitch": pitch.finish([str(p) for p in range(PITCH_RANGE[0], PITCH_RANGE[1] + 1)], src)}
    fam_src = {"Sources": src["Sources"] + f"\n\nReal recordings in test (qabcs): {', '.join(sorted(real)) or 'none'}.\n"
               "Families are General MIDI's program groups (program // 8)."}
    counts["instrument_family"] = family.finish(list(FAMILIES), fam_src)
    return counts


def sound_events(root: Path, size: Size, seed: int) -> dict:
    """Real recordings -> super-category, 5 folds disjoint by source file."""
    labelled = sources.real_sound_events()
    by_class: dict[str, list[Path]] = {}
    for path, label in sorted(labelled.items()):
        by_class.setdefault(label, []).append(path)
    folds = [f"fold{i:02d}" for i in range(5)]
    task = TaskWriter(root, "sound_events", _scene(folds, 2.0, ["top1_acc"], "new_split_kfold"))
    rng = random.Random(f"sound-events-{seed}")
    jobs = []
    for label, paths in sorted(by_class.items()):
        if len(paths) < 5:
            continue
        rng.shuffle(paths)
        for i, path in enumerate(paths):
            jobs.append((folds[i % 5], path, label))

    def crops(job: tuple[str, Path, str]) -> list[np.ndarray]:
        wav = audio.normalize(audio.load(job[1]))
        n = 2 * audio.SR
        starts = [0] if len(wav) <= n else np.linspace(0, len(wav) - n, size.crops_per_file).astype(int).tolist()
        return [wav[s : s + n] for s in sorted(set(starts))]

    for (fold, path, label), clips in zip(jobs, pmap(crops, jobs, "sound events")):
        src = "qabcs" if "qabcs" in str(path) else "tuxpaint"
        for k, clip in enumerate(clips):
            task.add(fold, f"{src}_{path.stem.lower()}_{k}.wav", clip, [label])
    vocab = sorted({label for _, _, label in jobs})
    return task.finish(vocab, {"Sources": "All REAL recordings: qabcs-data noises (category from qabcs' own letter tables: "
                               "animals, instrument, toys, vehicles among misc) and Tux Paint stamp sounds (category from the "
                               "stamp folder). Up to N evenly spaced 2 s crops per file; every crop of a file is in the same fold, "
                               "files are dealt round-robin per class so each fold has every class.\n\n"
                               + sources.licence_table(("qabcs-data", "tuxpaint-stamps-default"))})


def drums(root: Path, size: Size, seed: int) -> dict:
    """Real drum hits from hydrogen kits; train/valid/test kits are disjoint."""
    kits = sources.drum_hits()
    if len(kits) < 3:
        raise ValueError(f"need at least 3 hydrogen drum kits under {sources.HYDROGEN}, found {len(kits)}")
    names = sorted(kits)
    random.Random(f"drums-{seed}").shuffle(names)
    n_test = max(1, len(names) // 5)
    assign = {k: "test" for k in names[:n_test]} | {k: "valid" for k in names[n_test : 2 * n_test]}
    task = TaskWriter(root, "drums", _scene(["train", "valid", "test"], 1.0, ["top1_acc"]))
    jobs = []
    for kit in names:
        hits = kits[kit]
        random.Random(f"{kit}-{seed}").shuffle(hits)
        jobs += [(assign.get(kit, "train"), kit, p, lab) for p, lab in hits[: size.drum_hits_per_kit]]
    clips = pmap(lambda j: audio.normalize(audio.load(j[2])), jobs, "drums")
    for (split, kit, path, label), clip in zip(jobs, clips):
        slug = "_".join(re.sub(r"[^A-Za-z0-9]+", "-", part).strip("-") for part in (kit, path.stem))
        task.add(split, f"{slug}.wav", clip, [label])
    vocab = sorted({j[3] for j in jobs})
    return task.finish(vocab, {"Sources": "REAL drum samples of the hydrogen-drumkits package; class from the kit's "
                               "drumkit.xml instrument name. Kits: " + ", ".join(f"{k} ({assign.get(k, 'train')})" for k in names)
                               + ".\n\n" + sources.licence_table(("hydrogen-drumkits",))})


def event_detection(root: Path, size: Size, seed: int) -> dict:
    """5 s clips of background noise with 1-3 real events (animal, musical_instrument, machine,
    drum) and synthetic speech events, labelled with onset/offset in ms."""
    labelled = sources.real_sound_events()
    by_class: dict[str, list[Path]] = {}
    for path, label in sorted(labelled.items()):
        if label in ("animal", "musical_instrument", "machine"):
            by_class.setdefault(label, []).append(path)
    drum_files = [p for hits in sources.drum_hits().values() for p, lab in hits if lab in ("kick", "snare")]
    by_class["drum"] = sorted(drum_files)
    rng = random.Random(f"sed-{seed}")
    pools: dict[str, dict[str, list]] = {"train": {}, "valid": {}, "test": {}}
    for label, files in by_class.items():  # disjoint source files per split
        files = files[:]
        rng.shuffle(files)
        a, b = int(len(files) * 0.6), int(len(files) * 0.8)
        for split, part in (("train", files[:a]), ("valid", files[a:b]), ("test", files[b:])):
            pools[split][label] = part
    voices = sources.voice_pool(seed + 4)
    speech_voices = {"train": voices[:4], "valid": voices[4:6], "test": voices[6:8]}
    words = sorted({w for s in sources.tuxpaint_sentences().values() for w in s.split() if len(w) > 4})
    duration = 5.0
    meta = {"embedding_type": "event", "prediction_type": "multilabel", "split_mode": "trainvaltest",
            "sample_duration": duration, "evaluation": ["event_onset_200ms_fms", "segment_1s_er"],
            "splits": ["train", "valid", "test"]}
    task = TaskWriter(root, "event_detection", meta)
    plans = []
    for split, n in zip(("train", "valid", "test"), size.sed_clips):
        for i in range(n):
            events = []
            for _ in range(rng.randint(1, 3)):
                label = rng.choice(sorted(by_class) + ["speech"])
                src = rng.choice(speech_voices[split]) if label == "speech" else rng.choice(pools[split][label] or by_class[label])
                text = rng.choice(words).lower() if label == "speech" else ""
                events.append((label, src, text, rng.uniform(0.1, duration - 1.2)))
            plans.append((split, f"{split}_{i:05d}.wav", events))

    def render(plan: tuple) -> tuple[np.ndarray, list[dict]]:
        split, name, events = plan
        r = _rng("sed", seed, name)
        n = int(duration * audio.SR)
        mix = audio.pink_noise(n, r) * float(r.uniform(0.02, 0.08))
        labels = []
        for label, src, text, onset in events:
            clip = src.speak(text) if label == "speech" else audio.trim(audio.load(src))
            clip = audio.normalize(clip, float(r.uniform(0.3, 0.8)))[: int(1.0 * audio.SR)]
            start = int(onset * audio.SR)
            mix[start : start + len(clip)] += clip[: n - start]
            labels.append({"label": label, "start": round(onset * 1000, 1), "end": round((onset + len(clip) / audio.SR) * 1000, 1)})
        return audio.normalize(mix, 0.95), sorted(labels, key=lambda e: e["start"])

    for (split, name, _), (mix, labels) in zip(plans, pmap(render, plans, "event detection")):
        task.add(split, name, mix, labels)
    vocab = sorted(by_class) + ["speech"]
    return task.finish(sorted(vocab), {"Sources": "Background: pink noise at a random level. Events: REAL recordings (qabcs, "
                                       "Tux Paint, hydrogen kick/snare hits; source files disjoint across splits) and espeak-ng/flite "
                                       "words (voices disjoint across splits), each cut to at most 1 s and placed at a random onset; "
                                       "labels give onset/offset in ms (HEAR's event format)."})


def build(root: Path, ks_root: Path, size: Size, seed: int) -> None:
    counts = {"keywords": keywords(root, ks_root, seed)}
    counts.update(music(root, size, seed))
    counts["sound_events"] = sound_events(root, size, seed)
    counts["drums"] = drums(root, size, seed)
    counts["event_detection"] = event_detection(root, size, seed)
    rows = []
    for task, splits in counts.items():
        meta = json.loads((root / "tasks" / task / "task_metadata.json").read_text())
        rows.append((task, meta["embedding_type"], meta["split_mode"], ", ".join(meta["evaluation"]),
                     ", ".join(f"{s} {sum(c.values())}" for s, c in splits.items())))
    write_datasheet(root / "README.md", "HEAR-format tasks", {
        "Tasks": table(("task", "type", "splits", "scores", "labels per split"), rows)
        + "\n\nRun: `python -m heareval.embeddings.runner MODULE --model CKPT --tasks-dir <this>/tasks`; each "
        "task folder has its own README.md datasheet.",
        "Real audio in test splits": "keywords: real recorded digits (_unknown_) and appliance noise (_silence_); "
        "instrument_family: real qabcs instrument recordings; sound_events, drums: only real recordings; "
        "event_detection: real events in synthetic background.",
    })
