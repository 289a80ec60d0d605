"""LibriSpeech-format corpus for PR and ASR (s3prl libriphone / asr recipes).

Layout (as LibriSpeech, plus what s3prl's loaders need and its wheel does not ship):
  <root>/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
  <root>/.../<spk>-<chapter>.trans.txt, SPEAKERS.TXT
  <root>/lexicon.txt (WORD<TAB>ARPAbet phones), phoneme.txt (s3prl's 71-phone vocabulary),
  <root>/char.dict (fairseq dictionary for -d asr), <root>/len_for_bucket/<split>.csv
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from . import audio, sources
from .common import Size, fmt_hours, pmap, table, write_datasheet

SPLITS = ("train-clean-100", "dev-clean", "test-clean")
CHARS = list("ETAOINHSRDLUMCWFGYPBVK'XJQZ")  # LibriSpeech's char.dict order


def build(root: Path, size: Size, seed: int) -> None:
    rng = random.Random(f"librispeech-{seed}")
    real = sources.tuxpaint_english_readings()
    real_texts = {text for _, text in real}
    pool_sentences = sorted(set(sources.tuxpaint_sentences().values()) - real_texts)
    voices = sources.voice_pool(seed)
    n_train, n_dev, n_test = size.ls_voices
    split_voices = {
        "train-clean-100": voices[:n_train],
        "dev-clean": voices[n_train : n_train + n_dev],
        "test-clean": voices[n_train + n_dev : n_train + n_dev + n_test],
    }
    # (split, speaker id, chapter id, voice or real files, sentences); an utterance reads 2-4
    # sentences (the stamp descriptions are short), real ones join 2-3 recordings
    jobs: list[tuple[str, int, int, "sources.Voice | list[Path]", list[str]]] = []
    speakers: list[tuple[int, str, str, str]] = []  # id, sex, subset, name
    spk = 100
    for split in SPLITS:
        for voice in split_voices[split]:
            spk += 1
            speakers.append((spk, voice.gender, split, voice.name))
            for _ in range(size.ls_utts):
                jobs.append((split, spk, spk * 10 + 1, voice, rng.sample(pool_sentences, rng.randint(2, 4))))
    spk += 1
    n_real = size.ls_utts * (1 if size.name == "test" else 2)
    speakers.append((spk, "-", "test-clean", "tuxpaint-en (real recording)"))
    real = rng.sample(real, len(real))
    cursor = 0
    for i in range(n_real):
        group = real[cursor : cursor + 2 + i % 2]
        cursor += len(group)
        if len(group) < 2:
            break
        jobs.append(("test-clean", spk, spk * 10 + 1, [p for p, _ in group], [t for _, t in group]))

    def render(job: tuple[str, int, int, "sources.Voice | list[Path]", list[str]]) -> np.ndarray:
        _, _, _, src, texts = job
        if isinstance(src, list):
            return audio.normalize(audio.concat([audio.trim(audio.load(p)) for p in src], 0.4))
        return audio.normalize(audio.trim(src.speak(". ".join(texts).lower() + ".")))

    wavs = pmap(render, jobs, "librispeech")
    chapters: dict[tuple[str, int, int], list[tuple[str, str]]] = {}
    rows: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for (split, s, c, _, texts), wav in zip(jobs, wavs):
        text = " ".join(texts)
        utts = chapters.setdefault((split, s, c), [])
        uid = f"{s}-{c}-{len(utts):04d}"
        rel = f"{split}/{s}/{c}/{uid}.flac"
        audio.write(root / rel, wav)
        utts.append((uid, text))
        rows[split].append((rel, len(wav)))
    for (split, s, c), utts in chapters.items():
        (root / split / str(s) / str(c) / f"{s}-{c}.trans.txt").write_text("".join(f"{u} {t}\n" for u, t in utts))

    lines = ["; Synthetic and real speakers of the USAD LibriSpeech-format corpus",
             ";ID  |SEX| SUBSET           |MINUTES| NAME"]
    minutes = {s: 0.0 for s, *_ in speakers}
    for (split, s, _, _, _), wav in zip(jobs, wavs):
        minutes[s] += len(wav) / audio.SR / 60
    lines += [f"{s:<5}| {sex} | {sub:<17}| {minutes[s]:5.2f} | {name}" for s, sex, sub, name in speakers]
    (root / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n")

    words = sorted({w for *_, texts in jobs for text in texts for w in text.split()})
    pron = dict(zip(words, pmap(sources.flite_phones, words, "lexicon")))
    (root / "lexicon.txt").write_text("".join(f"{w}\t{' '.join(pron[w])}\n" for w in words))
    (root / "phoneme.txt").write_text("\n".join(sources.phone_vocabulary()) + "\n")
    counts = Counter(ch for *_, texts in jobs for ch in " ".join(texts).replace(" ", "|"))
    (root / "char.dict").write_text("".join(f"{ch} {counts.get(ch, 0)}\n" for ch in ["|"] + CHARS))
    (root / "len_for_bucket").mkdir(exist_ok=True)
    for split in SPLITS:
        ordered = sorted(rows[split], key=lambda r: -r[1])
        pd.DataFrame({"file_path": [r[0] for r in ordered], "length": [r[1] for r in ordered], "label": None}).to_csv(
            root / "len_for_bucket" / f"{split}.csv")
    _datasheet(root, jobs, wavs, speakers, len(words))


def _datasheet(root: Path, jobs: list, wavs: list, speakers: list, n_words: int) -> None:
    stats = []
    for split in SPLITS:
        idx = [i for i, j in enumerate(jobs) if j[0] == split]
        spk = {jobs[i][1] for i in idx}
        stats.append((split, len(idx), len(spk), fmt_hours(sum(len(wavs[i]) for i in idx) / audio.SR / 3600)))
    write_datasheet(root / "README.md", "LibriSpeech-format corpus (PR, ASR)", {
        "Contents": table(("split", "utterances", "speakers", "duration"), stats)
        + f"\n\nLexicon: {n_words} words. Speakers (SPEAKERS.TXT):\n\n"
        + table(("id", "sex", "subset", "voice"), [(s, g, sub, n) for s, g, sub, n in speakers]),
        "How it was made": (
            "Text: the English descriptions of Tux Paint's stamps (one short sentence each; an "
            "utterance reads 2-4 of them), normalised LibriSpeech-style (upper case, letters and "
            "apostrophes). Synthetic speakers "
            "are espeak-ng accent x voice-variant combinations (each with its own pitch and rate) "
            "and flite voices. test-clean also holds one REAL speaker: Tux Paint's recorded English "
            "descriptions (`*_desc.ogg`, 2-3 recordings joined per utterance, each used once; sex "
            "not recorded in the package), whose sentences never occur in train-clean-100."
        ),
        "Splits": "Speakers are disjoint across train-clean-100, dev-clean and test-clean (as in LibriSpeech).",
        "Files for s3prl": (
            "`lexicon.txt` (word TAB ARPAbet with stress, from flite's CMU lexicon + letter-to-sound "
            "rules via `t2p`; pass it as `corpus.lexicon` of the libriphone config or as "
            "`G2P(file_list=[...])`), `phoneme.txt` (the 71-phone libriphone vocabulary, "
            "`text.vocab_file`), `char.dict` (`datarc.dict_path` for -d asr), `len_for_bucket/` "
            "(`datarc.bucket_file`), `SPEAKERS.TXT` (read by s3prl.dataio.corpus.LibriSpeech)."
        ),
        "Sources and licences": sources.licence_table(("espeak-ng", "flite", "tuxpaint-stamps-default")),
    })

