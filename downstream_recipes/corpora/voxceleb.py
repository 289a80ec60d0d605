"""VoxCeleb1-format corpus for SID (s3prl voxceleb1 recipe).

  <root>/dev/wav/id1XXXX/<session>/<nnnnn>.wav   (s3prl globs <file_path>/*/wav/<iden path>)
  <root>/iden_split.txt                          ("1|2|3 idXXXXX/<session>/<nnnnn>.wav")

Speakers are synthetic voices and REAL recorded people: the asterisk prompt speaker, Tux Paint's
readers (one per language) and Hedgewars voice packs. Every speaker has utterances in train,
dev and test (closed-set identification, as VoxCeleb1's iden split); sessions differ per split.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from . import audio, sources
from .common import Size, fmt_hours, pmap, table, write_datasheet

MAX_SPEAKERS = 1251  # s3prl's SID head has exactly VoxCeleb1's 1251 outputs


def real_speakers() -> dict[str, list[Path]]:
    """Real speakers with enough recordings, most recordings first."""
    found = {"asterisk-allison": sources.asterisk_prompts(), **sources.tuxpaint_readers(), **sources.hedgewars_packs()}
    found = {k: v for k, v in found.items() if len(v) >= 20}
    return dict(sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def real_speakers_interleaved() -> list[tuple[str, list[Path]]]:
    """real_speakers() taking turns by source (asterisk, Hedgewars, Tux Paint), so that a few
    speakers already span the recording conditions."""
    families: dict[str, list[tuple[str, list[Path]]]] = {}
    for name, files in real_speakers().items():
        families.setdefault(name.split("-")[0], []).append((name, files))
    out = []
    while any(families.values()):
        for family in sorted(families):
            if families[family]:
                out.append(families[family].pop(0))
    return out


def build(root: Path, size: Size, seed: int) -> None:
    rng = random.Random(f"voxceleb-{seed}")
    sentences = sorted(set(sources.tuxpaint_sentences().values()))
    synth = sources.voice_pool(seed + 2)[: size.sid_synth]
    reals = dict(list(real_speakers().items())[: size.sid_real])
    speakers: list[tuple[str, "sources.Voice | list[Path]"]] = [(v.name, v) for v in synth]
    speakers += list(reals.items())
    if len(speakers) > MAX_SPEAKERS:
        raise ValueError(f"{len(speakers)} speakers exceed s3prl's {MAX_SPEAKERS}-way SID head")
    rng.shuffle(speakers)
    n = size.sid_utts
    n_dev = n_test = max(1, n // 6)
    jobs: list[tuple[str, str, int, "sources.Voice | list[Path]", list[str]]] = []
    split_lines = []
    for k, (name, src) in enumerate(speakers):
        sid = f"id{10001 + k}"
        files = list(src) if isinstance(src, list) else []
        rng.shuffle(files)
        for u in range(n):
            which = 3 if u < n_test else 2 if u < n_test + n_dev else 1
            session = f"s{which}{name.split('-')[0][:3]}{k:03d}"
            if files:  # 2-3 real prompts joined into one 2-6 s utterance
                part = [files.pop() for _ in range(min(3, len(files)))] or [src[u % len(src)]]
                jobs.append((sid, session, u, part, []))
            else:
                jobs.append((sid, session, u, src, rng.sample(sentences, 2)))
            split_lines.append(f"{which} {sid}/{session}/{u + 1:05d}.wav")

    def render(job: tuple) -> np.ndarray:
        _, _, _, src, texts = job
        if isinstance(src, list):
            return audio.normalize(audio.concat([audio.trim(audio.load(p)) for p in src]))
        return audio.normalize(audio.concat([src.speak(t.lower()) for t in texts]))

    wavs = pmap(render, jobs, "voxceleb1")
    for (sid, session, u, _, _), wav in zip(jobs, wavs):
        audio.write(root / "dev" / "wav" / sid / session / f"{u + 1:05d}.wav", wav)
    (root / "iden_split.txt").write_text("".join(f"{line}\n" for line in split_lines))

    rows = []
    for k, (name, src) in enumerate(speakers):
        sid = f"id{10001 + k}"
        secs = sum(len(w) for (s, *_), w in zip(jobs, wavs) if s == sid) / audio.SR
        rows.append((sid, name, "real recording" if isinstance(src, list) else "synthetic", f"{secs:.0f} s"))
    total = sum(len(w) for w in wavs) / audio.SR / 3600
    write_datasheet(root / "README.md", "VoxCeleb1-format corpus (SID)", {
        "Contents": f"{len(speakers)} speakers ({len(reals)} real), {len(jobs)} utterances, {fmt_hours(total)}; "
        f"per speaker {n - n_dev - n_test} train / {n_dev} dev / {n_test} test utterances.\n\n"
        + table(("id", "speaker", "kind", "duration"), rows),
        "How it was made": (
            "Synthetic speakers read two random Tux Paint sentences per utterance. Real speakers' "
            "utterances join 2-3 of their own recordings (asterisk prompts, Tux Paint descriptions in "
            "that reader's language, Hedgewars phrases) with 0.25 s gaps; each real file is used once."
        ),
        "Splits": "iden_split.txt: 1 = train, 2 = dev, 3 = test; every speaker in all three (closed set). "
        "Ids start at id10001 because s3prl derives the class index as int(id[2:]) - 10001.",
        "Sources and licences": sources.licence_table(("espeak-ng", "flite", "asterisk-core-sounds-en-wav", "tuxpaint-stamps-default", "hedgewars-data")),
    })
