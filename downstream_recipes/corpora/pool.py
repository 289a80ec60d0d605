"""Unlabeled speech + sound + music pool for distillation, disjoint from every evaluation split.

Writes <root>/audio/{speech,sound,music}/*.wav and <root>/manifest.tsv with the distillation
trainer's header `path num_samples sample_rate domain` (absolute paths).
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import soundfile as sf

from . import audio, sources
from .common import Size, fmt_hours, pmap, table, write_datasheet

COLUMNS = ("path", "num_samples", "sample_rate", "domain")
POOL_FONT = "TimGM6mb"


def build(root: Path, size: Size, seed: int) -> None:
    rng = random.Random(f"pool-{seed}")
    n = size.pool_items
    # speech: voices from the end of the pool order (evaluation corpora take theirs from the start)
    voices = sources.voice_pool(seed + 5)[-12:]
    sentences = sorted(set(sources.tuxpaint_sentences().values()))
    speech_jobs = [(rng.choice(voices), rng.sample(sentences, 3)) for _ in range(n)]
    speech = pmap(lambda j: audio.normalize(audio.concat([j[0].speak(t.lower()) for t in j[1]])), speech_jobs, "pool speech")
    # sound: real recordings no evaluation task uses, in up-to-10 s pieces
    sound_files = sources.unlabeled_sounds()
    rng.shuffle(sound_files)
    sound = [audio.normalize(audio.load(p))[: 10 * audio.SR] for p in sound_files[:n]]
    # music: random 8-note phrases rendered with a training soundfont
    notes = [(rng.randrange(88), rng.randint(40, 84), rng.randint(60, 120)) for _ in range(8 * n)]
    rendered = audio.render_notes(sources.SOUNDFONTS[POOL_FONT], notes, 0.45, 0.5)
    music = [audio.normalize(np.concatenate(rendered[8 * i : 8 * i + 8])) for i in range(n)]
    rows = []
    for domain, clips in (("speech", speech), ("sound", sound), ("music", music)):
        for i, clip in enumerate(clips):
            if len(clip) < audio.SR:  # the trainer skips clips under 1 s; pad rather than lose them
                clip = np.pad(clip, (0, audio.SR - len(clip)))
            path = audio.write(root / "audio" / domain / f"{domain}_{i:05d}.wav", clip)
            rows.append((str(path.resolve()), len(clip), audio.SR, domain))
    tmp = root / "manifest.tsv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    tmp.replace(root / "manifest.tsv")
    stats = [(d, sum(1 for r in rows if r[3] == d), fmt_hours(sum(r[1] for r in rows if r[3] == d) / audio.SR / 3600)) for d in ("speech", "sound", "music")]
    write_datasheet(root / "README.md", "Unlabeled distillation pool", {
        "Contents": table(("domain", "files", "duration"), stats) + "\n\n`manifest.tsv`: " + "\t".join(COLUMNS),
        "How it was made": "speech: three Tux Paint sentences per file from synthetic voices; sound: real "
        "recordings (Tux Paint stamp sounds and qabcs noises) that no evaluation task uses, up to 10 s; "
        f"music: random 8-note phrases (random GM programs) rendered with {POOL_FONT}.",
        "Disjointness": "All files are newly written here; no evaluation split's file or real source recording "
        "is reused (`usad corpora check` verifies it by content hash).",
    })


def read(manifest: Path) -> list[tuple[str, int, int, str]]:
    with open(manifest, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if tuple(header or ()) != COLUMNS:
            raise ValueError(f"{manifest}: header must be {COLUMNS}, got {header}")
        rows = [(r[0], int(r[1]), int(r[2]), r[3]) for r in reader]
    for path, frames, rate, domain in rows:
        info = sf.info(path)
        if info.frames != frames or info.samplerate != rate or domain not in ("speech", "sound", "music"):
            raise ValueError(f"{manifest}: row for {path} does not match the file ({info.frames} frames, {info.samplerate} Hz) or has domain {domain!r}")
    return rows
