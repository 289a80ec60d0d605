"""IEMOCAP_full_release-format corpus for ER (s3prl emotion recipe).

  <root>/Session{1..5}/sentences/wav/<dialog>/<dialog>_<F|M><nnn>.wav
  <root>/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt
      "[start - end]<TAB><utterance><TAB><label><TAB>[V, A, D]" lines, as IEMOCAP's own

s3prl's IEMOCAP_preprocess.py turns the label files into meta_data/Session{n}/{train,test}_
meta_data.json (the recipe runs it); labels neu, hap, ang, sad, and exc (folded into hap).

The emotions are ACTED BY PARAMETERS (expressive.py), not felt: synthetic voices speak with
per-emotion pitch level/range, tempo and loudness; real recordings are re-performed by
speed and gain. Texts come from one pool for every emotion, so words carry no label.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np

from . import audio, expressive, sources
from .common import Size, fmt_hours, pmap, table, write_datasheet
from .voxceleb import real_speakers_interleaved

SESSIONS = 5
EMOTIONS = ("neu", "hap", "ang", "sad")
# The valence/arousal/dominance triple IEMOCAP's raters gave is not rated here; the files carry
# a fixed triple per emotion so the line format stays IEMOCAP's.
VAD = {"neu": (3.0, 2.5, 2.5), "hap": (4.0, 3.5, 3.0), "exc": (4.0, 4.0, 3.5), "ang": (1.5, 4.0, 4.0), "sad": (1.5, 2.0, 2.0)}
LEADING_GAP_S = (0.5, 2.0)  # silence between turns of a dialog, for the label times


def _speakers(size: Size, seed: int) -> list[dict[str, tuple[str, "sources.Voice | list[Path]"]]]:
    """Per session: the "F" and "M" speaker slots (IEMOCAP's naming), synthetic voices of that
    sex, except that sessions 1..er_real give one slot to a real recorded speaker."""
    voices = sources.voice_pool(seed + 9)
    female = [v for v in voices if v.gender == "F"]
    male = [v for v in voices if v.gender == "M"]
    need = len(EMOTIONS) * size.er_utts * 2  # two prompts per utterance, each used once
    reals = [r for r in real_speakers_interleaved() if len(r[1]) >= need][: size.er_real]
    sessions = []
    for s in range(SESSIONS):
        slots: dict[str, tuple[str, "sources.Voice | list[Path]"]] = {"F": (female[s].name, female[s]), "M": (male[s].name, male[s])}
        if s < len(reals):
            name, files = reals[s]
            slots["F" if name == "asterisk-allison" else "M"] = (name, files)  # Allison is a woman; the others' sex is not recorded
        sessions.append(slots)
    return sessions


def build(root: Path, size: Size, seed: int) -> None:
    rng = random.Random(f"iemocap-{seed}")
    sentences = sorted(set(sources.tuxpaint_sentences().values()))
    sessions = _speakers(size, seed)
    # job: (session, dialog, slot, index, label, speaker source, text or real files, style)
    jobs: list[tuple[int, str, str, int, str, "sources.Voice | list[Path]", "str | list[Path]", expressive.Style]] = []
    for s, slots in enumerate(sessions, 1):
        turns = [(slot, emo) for slot in slots for emo in EMOTIONS for _ in range(size.er_utts)]
        rng.shuffle(turns)
        pools = {slot: rng.sample(list(src), len(src)) for slot, (_, src) in slots.items() if isinstance(src, list)}
        n_dialogs = max(1, len(turns) // 8)
        counters: Counter = Counter()
        for k, (slot, emo) in enumerate(turns):
            d = k % n_dialogs
            dialog = f"Ses{s:02d}{'FM'[d % 2]}_impro{d + 1:02d}"
            label = "exc" if emo == "hap" and rng.random() < 0.3 else emo
            style = expressive.jittered(expressive.STYLES[label], rng)
            src = slots[slot][1]
            content: "str | list[Path]"
            if isinstance(src, list):
                content = [pools[slot].pop() for _ in range(2)]  # two real prompts, each used once
            else:
                content = ". ".join(rng.sample(sentences, 2)).lower()
            jobs.append((s, dialog, slot, counters[(dialog, slot)], label, src, content, style))
            counters[(dialog, slot)] += 1

    def render(job: tuple) -> np.ndarray:
        *_, src, content, style = job
        if isinstance(content, list):
            return expressive.act(audio.concat([audio.trim(audio.load(p)) for p in content]), style)
        return expressive.speak(src, content, style)

    wavs = pmap(render, jobs, "iemocap")
    labels: dict[tuple[int, str], list[str]] = {}
    clock: dict[tuple[int, str], float] = {}
    for (s, dialog, slot, i, label, *_), wav in zip(jobs, wavs):
        utt = f"{dialog}_{slot}{i:03d}"
        audio.write(root / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav", wav)
        start = clock.get((s, dialog), 0.0) + rng.uniform(*LEADING_GAP_S)
        end = start + len(wav) / audio.SR
        clock[(s, dialog)] = end
        v, a, d = VAD[label]
        labels.setdefault((s, dialog), []).append(f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n")
    for (s, dialog), lines in labels.items():
        path = root / f"Session{s}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n" + "\n".join(lines))
    _datasheet(root, sessions, jobs, wavs)


def _datasheet(root: Path, sessions: list, jobs: list, wavs: list) -> None:
    rows = []
    for s, slots in enumerate(sessions, 1):
        for slot, (name, src) in slots.items():
            mine = [(j, w) for j, w in zip(jobs, wavs) if j[0] == s and j[2] == slot]
            counts = Counter(j[4] for j, _ in mine)
            kind = "real recording" if isinstance(src, list) else "synthetic"
            rows.append((f"Session{s}", slot, name, kind, " ".join(f"{e} {counts[e]}" for e in ("neu", "hap", "exc", "ang", "sad")),
                         f"{sum(len(w) for _, w in mine) / audio.SR:.0f} s"))
    styles = [(e, f"{st.semitones:+.0f}", f"{st.rate:.2f}", f"{st.gain_db:+.0f}", st.pitch_range, st.amplitude)
              for e, st in expressive.STYLES.items()]
    total = sum(len(w) for w in wavs) / audio.SR / 3600
    write_datasheet(root / "README.md", "IEMOCAP_full_release-format corpus (ER): emotions acted by parameters", {
        "Contents": f"{len(jobs)} utterances, {fmt_hours(total)}, 5 sessions x 2 speakers.\n\n"
        + table(("session", "slot", "speaker", "kind", "labels", "duration"), rows),
        "What the labels mean (read this)": (
            "Nobody here expresses an emotion. Each utterance is rendered with the prosody settings of "
            "its label (expressive.py), the textbook correlates of the four IEMOCAP classes: anger and "
            "happiness higher and wider in pitch, faster and louder; sadness lower, narrower, slower and "
            "softer. A probe that scores well has learned to hear pitch level and range, tempo and "
            "loudness, which real emotion recognition needs but which is far from all of it (no voice "
            "quality, no lexical or conversational cues). Every utterance varies around its label "
            f"(pitch +-{expressive.JITTER['semitones']} semitone, tempo +-{expressive.JITTER['rate'] * 100:.0f}%, "
            f"gain +-{expressive.JITTER['gain_db']} dB), so the classes overlap.\n\n"
            + table(("label", "pitch (semitones)", "tempo", "gain dB", "espeak range", "espeak amplitude"), styles)
            + "\n\nSynthetic voices: espeak-ng through SSML `<prosody pitch range>` plus -s/-a, flite through "
            "int_f0_target_mean/stddev and duration_stretch. Real recordings (two prompts of that speaker "
            "joined) are re-performed by tape-speed resampling (pitch moves with tempo, 12 log2(tempo) "
            "semitones) and gain; their own delivery stays whatever it was. About 30% of the happy "
            "utterances carry IEMOCAP's `exc` (excited, the louder and faster end), which s3prl folds into `hap`."
        ),
        "How it was made": (
            "Texts: two Tux Paint stamp descriptions per synthetic utterance, drawn from one pool for every "
            "emotion. Utterances are grouped into dialogs (`Ses0nX_improNN`) with the F/M slot of the "
            "speaker in the name, as in IEMOCAP; the slot letter is the voice's sex for the synthetic voices "
            "and for Allison (asterisk); the other real speakers' sex is not recorded in their packages. "
            "Label-file times lay the turns of a dialog one after another with 0.5-2 s gaps; there is no "
            "dialog audio. The [V, A, D] triple is a fixed value per label, not a rating."
        ),
        "Splits": "As IEMOCAP: leave one session out (fold n tests Session n, trains on the other four; s3prl "
        "takes 20% of the training sessions as dev at random). Speakers are disjoint across sessions.",
        "Sources and licences": sources.licence_table(("espeak-ng", "flite", "asterisk-core-sounds-en-wav", "tuxpaint-stamps-default", "hedgewars-data")),
    })
