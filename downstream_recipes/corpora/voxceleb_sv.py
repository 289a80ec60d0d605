"""VoxCeleb1-format corpus for ASV (s3prl sv_voxceleb1 recipe): speaker verification, so the
test speakers are never heard in training (unlike the closed-set SID corpus in VoxCeleb1/).

  <root>/dev/wav/idXXXXX/<session>/<nnnnn>.wav    training speakers (s3prl trains on every one)
  <root>/test/wav/idXXXXX/<session>/<nnnnn>.wav   test speakers (ids from id10270, as VoxCeleb1's)
  <root>/voxceleb1_test_v2.txt                    trials: "1|0 idA/sess/n.wav idB/sess/n.wav"
  <root>/vox1_meta.csv                            id, name, kind, set (as VoxCeleb1's meta file)

Most test speakers are REAL recorded people (asterisk's Allison, Tux Paint's readers, Hedgewars
voice packs); training speakers are synthetic voices plus the real speakers left over.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np

from . import audio, sources
from .common import Size, fmt_hours, pmap, table, write_datasheet
from .voxceleb import real_speakers_interleaved

TEST_FIRST_ID = 10270
SESSIONS = 2  # recording sessions per speaker; trials pair utterances across them
TRIALS_PER_UTT = 2  # target and non-target trials per test utterance
RESERVE = 2  # extra pieces an utterance may add to reach MIN_VOICED_S
# s3prl drops training utterances shorter than 2 s after its VAD (sox `silence`, which cuts every
# pause over 0.1 s); utterances are made longer than this after that same effect chain.
MIN_VOICED_S = 2.5


def _session(sid: str, k: int) -> str:
    """An 11-character YouTube-like session id, stable for (speaker, session)."""
    return hashlib.sha1(f"{sid}-{k}".encode()).hexdigest()[:11]


def voiced_seconds(wav: np.ndarray) -> float:
    """Seconds left after s3prl's sv_voxceleb1 effect chain (channels, rate, gain, silence)."""
    import torch

    from usad_upstream.compat import apply_effects_tensor
    from s3prl.downstream.sv_voxceleb1.dataset import EFFECTS  # noqa: E402 (import after compat)

    out, rate = apply_effects_tensor(torch.from_numpy(wav).unsqueeze(0), audio.SR, EFFECTS)
    return out.shape[-1] / rate


def build(root: Path, size: Size, seed: int) -> None:
    from usad_upstream.compat import patch_s3prl

    patch_s3prl()  # voiced_seconds uses s3prl's own effect chain
    rng = random.Random(f"voxceleb-sv-{seed}")
    sentences = sorted(set(sources.tuxpaint_sentences().values()))
    n_train, n_test = size.asv_speakers
    need = size.asv_utts * (3 + RESERVE)  # each recording used once
    reals = [r for r in real_speakers_interleaved() if len(r[1]) >= need]
    n_real_test = min(len(reals), max(1, (3 * n_test + 3) // 4))
    test = reals[:n_real_test]
    synth = sources.voice_pool(seed + 7)
    test += [(v.name, v) for v in synth[: n_test - len(test)]]
    spare_reals = reals[n_real_test : n_real_test + n_train // 4]
    train = spare_reals + [(v.name, v) for v in synth[n_test : n_test + n_train - len(spare_reals)]]
    if TEST_FIRST_ID - 10001 < len(train):
        raise ValueError(f"{len(train)} training speakers would reach the test ids (id{TEST_FIRST_ID}+)")
    speakers = [("dev", f"id{10001 + k}", name, src) for k, (name, src) in enumerate(train)]
    speakers += [("test", f"id{TEST_FIRST_ID + k}", name, src) for k, (name, src) in enumerate(test)]

    # (set, id, session, index, source, pieces): 3 pieces, then reserves used only when s3prl's
    # VAD would leave too little (each utterance owns its reserves, so threads never share them)
    jobs = []
    for which, sid, name, src in speakers:
        files = rng.sample(list(src), len(src)) if isinstance(src, list) else []
        for u in range(size.asv_utts):
            if isinstance(src, list):
                pieces = [files.pop() for _ in range(3 + RESERVE)]
            else:
                pieces = rng.sample(sentences, 3 + RESERVE)
            jobs.append((which, sid, _session(sid, u % SESSIONS), u, src, pieces))

    def render(job: tuple) -> np.ndarray:
        *_, src, pieces = job
        for n in range(min(3, len(pieces)), len(pieces) + 1):
            if isinstance(src, list):
                wav = audio.normalize(audio.concat([audio.trim(audio.load(p)) for p in pieces[:n]]))
            else:
                wav = audio.normalize(audio.concat([src.speak(t.lower()) for t in pieces[:n]]))
            if voiced_seconds(wav) >= MIN_VOICED_S:
                break
        return wav

    wavs = pmap(render, jobs, "voxceleb1 sv")
    by_speaker: dict[str, list[tuple[str, str]]] = {}
    for (which, sid, session, u, *_), wav in zip(jobs, wavs):
        rel = f"{sid}/{session}/{u + 1:05d}.wav"
        audio.write(root / which / "wav" / rel, wav)
        if which == "test":
            by_speaker.setdefault(sid, []).append((session, rel))
    trials = _trials(by_speaker, rng)
    (root / "voxceleb1_test_v2.txt").write_text("".join(f"{t} {a} {b}\n" for t, a, b in trials))
    (root / "vox1_meta.csv").write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n" + "".join(
        f"{sid}\t{name}\t{'-' if isinstance(src, list) else src.gender.lower()}\t-\t{which}\n" for which, sid, name, src in speakers))
    _datasheet(root, speakers, jobs, wavs, trials)


def _trials(by_speaker: dict[str, list[tuple[str, str]]], rng: random.Random) -> list[tuple[int, str, str]]:
    """Per test utterance: TRIALS_PER_UTT target trials (same speaker, other session first) and as
    many non-target trials (another test speaker); each unordered pair once."""
    seen: set[frozenset[str]] = set()
    out = []
    ids = sorted(by_speaker)
    for sid in ids:
        for session, rel in by_speaker[sid]:
            same = sorted((r for s, r in by_speaker[sid] if r != rel), key=lambda r: (r.split("/")[1] == session, r))
            others = [r for o in ids if o != sid for _, r in by_speaker[o]]
            for label, pool in ((1, same[:TRIALS_PER_UTT]), (0, rng.sample(others, min(TRIALS_PER_UTT, len(others))))):
                for other in pool:
                    key = frozenset((rel, other))
                    if key not in seen:
                        seen.add(key)
                        out.append((label, rel, other))
    return out


def _datasheet(root: Path, speakers: list, jobs: list, wavs: list, trials: list) -> None:
    rows = []
    for which, sid, name, src in speakers:
        secs = sum(len(w) for j, w in zip(jobs, wavs) if j[1] == sid) / audio.SR
        rows.append((which, sid, name, "real recording" if isinstance(src, list) else "synthetic", f"{secs:.0f} s"))
    total = sum(len(w) for w in wavs) / audio.SR / 3600
    n_target = sum(t for t, _, _ in trials)
    n_dev = sum(1 for s in speakers if s[0] == "dev")
    write_datasheet(root / "README.md", "VoxCeleb1-format corpus (ASV, speaker verification)", {
        "Contents": f"{n_dev} training speakers (dev/wav), {len(speakers) - n_dev} test speakers (test/wav), "
        f"{len(jobs)} utterances, {fmt_hours(total)}; {len(trials)} trials ({n_target} target, "
        f"{len(trials) - n_target} non-target) in voxceleb1_test_v2.txt.\n\n"
        + table(("set", "id", "speaker", "kind", "duration"), rows),
        "How it was made": (
            "Real speakers' utterances join three of their own recordings (asterisk prompts, Tux Paint "
            "descriptions in that reader's language, Hedgewars phrases), each file used once; synthetic "
            f"speakers read three Tux Paint sentences. Up to {RESERVE} more pieces are added while s3prl's own VAD "
            f"chain (sox channels/rate/gain/silence, as emulated by usad_upstream.compat) leaves under {MIN_VOICED_S} s "
            f"of an utterance: s3prl drops training utterances under 2 s. Utterances alternate between {SESSIONS} "
            "sessions per speaker (11-character ids)."
        ),
        "Splits": "Test speakers (ids from id10270, as VoxCeleb1's test set) never occur in dev/wav. Trials: for each "
        f"test utterance {TRIALS_PER_UTT} target trials (same speaker, the other session first) and "
        f"{TRIALS_PER_UTT} non-target trials (random other test speakers), each pair listed once. s3prl's "
        "sv_voxceleb1 trains on every speaker folder in dev/wav; it reads no other list for training.",
        "Sources and licences": sources.licence_table(("espeak-ng", "flite", "asterisk-core-sounds-en-wav", "tuxpaint-stamps-default", "hedgewars-data")),
    })
