"""quesst14Database-format corpus for QbE (s3prl quesst14_dtw recipe; scored by
downstream_recipes/superb/quesst_score.py).

  <root>/Audio/quesst14_<nnnnn>.wav                    the search documents
  <root>/{dev,eval}_queries/quesst14_{dev,eval}_<nnnn>.wav   spoken queries (one term each)
  <root>/scoring/language_key_{utterances,dev,eval}.lst  "<path> nnenglish" (s3prl and torchaudio
      drop the first path component, so paths read quesst14Database/Audio/...)
  <root>/scoring/groundtruth_quesst14_{dev,eval}/
      quesst14.ecf.xml (documents), quesst14_<split>.tlist.xml (queries),
      quesst14_<split>.rttm ("LEXEME <doc> 1 <tbeg> <dur> <query> lex <NA> <NA>" per occurrence)

A query matches a document when the document's text contains its word (QUESST 2014 type 1,
exact matches). dev and eval queries use disjoint words and voices, and no query voice reads
documents. Documents include REAL recordings (Tux Paint's English reader).
"""
from __future__ import annotations

import random
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from . import audio, sources
from .common import Size, fmt_hours, pmap, table, write_datasheet

LANGUAGE = "nnenglish"  # QUESST's tag for non-native English, the only one s3prl reads
QUERY_VOICES = 6  # per split
STOP = {"ABOUT", "WHICH", "THEIR", "THERE", "WITH", "FROM", "THAT", "THIS", "MEANS", "OTHER", "LETTER", "AMERICAN", "LANGUAGE"}
GAP_S = 0.3  # between the sentences of a document


def _words(text: str) -> set[str]:
    return set(text.split())


def build(root: Path, size: Size, seed: int) -> None:
    rng = random.Random(f"quesst-{seed}")
    sentences = sorted(set(sources.tuxpaint_sentences().values()))
    readings = sources.tuxpaint_english_readings()  # real: (file, text)
    real_words = {w for _, t in readings for w in _words(t)}
    candidates = sorted({w for t in sentences for w in _words(t) if len(w) >= 5 and w.isalpha() and w not in STOP})
    rng.shuffle(candidates)
    candidates.sort(key=lambda w: w not in real_words)  # words a real reader also says first
    n_dev, n_eval = size.qbe_terms
    picked = candidates[: n_dev + n_eval]
    rng.shuffle(picked)
    terms = {"dev": picked[:n_dev], "eval": picked[n_dev:]}
    all_terms = set(picked)
    neutral = [s for s in sentences if not _words(s) & all_terms]

    voices = sources.voice_pool(seed + 8)
    query_voices = {"dev": voices[:QUERY_VOICES], "eval": voices[QUERY_VOICES : 2 * QUERY_VOICES]}
    doc_voices = voices[2 * QUERY_VOICES :]
    docs: list[tuple[str, "sources.Voice | None", list]] = []  # (kind, voice, [sentence text | (file, text)])
    unused_real = list(readings)
    rng.shuffle(unused_real)
    for term in picked:
        with_term = [s for s in sentences if term in _words(s)]
        real = [r for r in unused_real if term in _words(r[1])]
        for k in range(size.qbe_docs_per_term):
            if k == 0 and real:  # a real recording that says the word, plus another real sentence
                unused_real.remove(real[0])
                filler = next((r for r in unused_real if not _words(r[1]) & all_terms), None)
                if filler:
                    unused_real.remove(filler)
                docs.append(("real", None, [real[0]] + ([filler] if filler else [])))
                continue
            parts = [rng.choice(with_term)] + rng.sample(neutral, rng.randint(1, 2))
            rng.shuffle(parts)
            docs.append(("synthetic", rng.choice(doc_voices), parts))
    for _ in range(size.qbe_distractors):
        docs.append(("synthetic", rng.choice(doc_voices), rng.sample(neutral, rng.randint(2, 3))))
    rng.shuffle(docs)

    def render_doc(doc: tuple) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        kind, voice, parts = doc
        clips, spans, t = [], [], 0.0
        for part in parts:
            clip = audio.trim(audio.load(part[0])) if kind == "real" else voice.speak(part.lower())
            text = part[1] if kind == "real" else part
            spans.append((text, t, len(clip) / audio.SR))
            t += len(clip) / audio.SR + GAP_S
            clips.append(clip)
        return audio.normalize(audio.concat(clips, GAP_S)), spans

    queries = [(split, i, term, query_voices[split][i % QUERY_VOICES]) for split in ("dev", "eval")
               for i, term in enumerate(terms[split])]
    doc_audio = pmap(render_doc, docs, "quesst docs")
    query_audio = pmap(lambda q: audio.normalize(q[3].speak(q[2].lower())), queries, "quesst queries")

    doc_names = [f"quesst14_{k + 1:05d}" for k in range(len(docs))]
    for name, (wav, _) in zip(doc_names, doc_audio):
        audio.write(root / "Audio" / f"{name}.wav", wav)
    query_names = {}
    for (split, i, term, _), wav in zip(queries, query_audio):
        query_names[(split, term)] = name = f"quesst14_{split}_{i + 1:04d}"
        audio.write(root / f"{split}_queries" / f"{name}.wav", wav)

    scoring = root / "scoring"
    scoring.mkdir(parents=True)
    (scoring / "language_key_utterances.lst").write_text(
        "".join(f"quesst14Database/Audio/{n}.wav {LANGUAGE}\n" for n in doc_names))
    occurrences = {}
    for split in ("dev", "eval"):
        (scoring / f"language_key_{split}.lst").write_text("".join(
            f"quesst14Database/{split}_queries/{query_names[(split, t)]}.wav {LANGUAGE}\n" for t in terms[split]))
        gt = scoring / f"groundtruth_quesst14_{split}"
        gt.mkdir()
        lines = []
        for name, (_, spans) in zip(doc_names, doc_audio):
            for text, start, dur in spans:
                for term in sorted(_words(text) & set(terms[split])):
                    lines.append(f"LEXEME {name} 1 {start:.3f} {dur:.3f} {query_names[(split, term)]} lex <NA> <NA>")
        (gt / f"quesst14_{split}.rttm").write_text("".join(f"{line}\n" for line in lines))
        occurrences[split] = len(lines)
        total = sum(len(w) for w, _ in doc_audio) / audio.SR
        (gt / "quesst14.ecf.xml").write_text(
            f'<ecf source_signal_duration="{total:.3f}" language="{LANGUAGE}" version="usad local corpus">\n'
            + "".join(f'  <excerpt audio_filename={quoteattr(n)} channel="1" tbeg="0.000" dur="{len(w) / audio.SR:.3f}" '
                      f'source_type="{d[0]}"/>\n' for n, d, (w, _) in zip(doc_names, docs, doc_audio))
            + "</ecf>\n")
        (gt / f"quesst14_{split}.tlist.xml").write_text(
            f'<termlist ecf_filename="quesst14.ecf.xml" version="1" language="{LANGUAGE}" encoding="UTF-8">\n'
            + "".join(f'  <term termid={quoteattr(query_names[(split, t)])}><termtext>{t.lower()}</termtext></term>\n'
                      for t in terms[split])
            + "</termlist>\n")
    _datasheet(root, docs, doc_audio, queries, query_audio, terms, occurrences)


def _datasheet(root: Path, docs: list, doc_audio: list, queries: list, query_audio: list, terms: dict,
               occurrences: dict) -> None:
    n_real = sum(1 for d in docs if d[0] == "real")
    doc_hours = sum(len(w) for w, _ in doc_audio) / audio.SR / 3600
    rows = [(split, len(terms[split]), ", ".join(t.lower() for t in terms[split]), occurrences[split],
             ", ".join(sorted({q[3].name for q in queries if q[0] == split})))
            for split in ("dev", "eval")]
    write_datasheet(root / "README.md", "quesst14Database-format corpus (QbE)", {
        "Contents": f"{len(docs)} documents ({n_real} real recordings), {fmt_hours(doc_hours)}; "
        f"{len(queries)} queries, {sum(len(w) for w in query_audio) / audio.SR:.0f} s.\n\n"
        + table(("split", "queries", "terms", "occurrences", "query voices"), rows),
        "How it was made": (
            "Terms are words of at least five letters from Tux Paint's stamp descriptions, words that Tux "
            "Paint's real English reader also says first; dev and eval terms are disjoint. Each term has "
            "documents that say it: a sentence containing the word plus 1-2 sentences without any term, read "
            "by a synthetic document voice, or, where the real reader says the word, that REAL recording plus "
            "one more of the reader's sentences. Distractor documents contain no term. Queries are the term "
            "alone, spoken by query voices that read no document (6 per split, disjoint). Only exact matches "
            "(QUESST 2014's type 1): plurals and other inflections do not count."
        ),
        "Ground truth": (
            "A (query, document) pair is a target when the document's text contains the query's word. rttm "
            "times are those of the sentence that contains it (not of the word). The ecf lists every document, "
            "the tlist every query (termtext = the word, which QUESST itself does not publish)."
        ),
        "Scoring": "s3prl's quesst14_dtw writes benchmark.stdlist.xml (the NIST STD format the official "
        "MediaEvalQUESST2014.jar scores). That jar is not distributed here, so the recipe scores with "
        "downstream_recipes/superb/quesst_score.py: ATWV/MTWV (C_miss 100, C_fa 1, P_target 0.0008) and "
        "actual/minimum Cnxe.",
        "Sources and licences": sources.licence_table(("espeak-ng", "flite", "tuxpaint-stamps-default")),
    })
