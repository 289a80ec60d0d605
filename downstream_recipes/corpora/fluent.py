"""Fluent Speech Commands-format corpus for IC (s3prl fluent_commands recipe).

  <root>/data/{train,valid,test}_data.csv  (index, path, speakerId, transcription, action, object, location)
  <root>/wavs/speakers/<speakerId>/<utt>.wav

Intents and phrasings follow FSC's smart-home domain; speakers are disjoint across splits, and
every (action, object, location) value in valid/test also occurs in train (s3prl builds its
label maps from train_data.csv only).
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from . import audio, sources
from .common import Size, fmt_hours, pmap, table, write_datasheet

# (action, object, location) -> phrasings
INTENTS: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("activate", "lights", "none"): ("turn on the lights", "lights on", "switch on the lights"),
    ("deactivate", "lights", "none"): ("turn off the lights", "lights off", "switch off the lights"),
    ("activate", "lights", "kitchen"): ("turn on the kitchen lights", "kitchen lights on"),
    ("deactivate", "lights", "kitchen"): ("turn off the kitchen lights", "kitchen lights off"),
    ("activate", "lights", "bedroom"): ("turn on the bedroom lights", "bedroom lights on"),
    ("deactivate", "lights", "bedroom"): ("turn off the lights in the bedroom", "bedroom lights off"),
    ("activate", "lights", "washroom"): ("turn on the washroom lights", "washroom lights on"),
    ("deactivate", "lights", "washroom"): ("turn off the washroom lights", "washroom lights off"),
    ("increase", "volume", "none"): ("turn up the volume", "louder please", "increase the volume"),
    ("decrease", "volume", "none"): ("turn down the volume", "quieter please", "decrease the volume"),
    ("increase", "heat", "none"): ("turn up the heat", "make it warmer", "increase the temperature"),
    ("decrease", "heat", "none"): ("turn down the heat", "make it cooler", "decrease the temperature"),
    ("increase", "heat", "kitchen"): ("turn up the heat in the kitchen", "kitchen heat up"),
    ("decrease", "heat", "bedroom"): ("turn down the heat in the bedroom", "bedroom heat down"),
    ("activate", "music", "none"): ("play the music", "start the music", "put on some music"),
    ("deactivate", "music", "none"): ("stop the music", "pause the music", "music off"),
    ("activate", "lamp", "none"): ("turn the lamp on", "switch on the lamp"),
    ("deactivate", "lamp", "none"): ("turn the lamp off", "switch off the lamp"),
    ("bring", "newspaper", "none"): ("bring me the newspaper", "get me the newspaper"),
    ("bring", "juice", "none"): ("bring me some juice", "get me the juice"),
    ("bring", "socks", "none"): ("bring me my socks", "fetch my socks"),
    ("bring", "shoes", "none"): ("bring me my shoes", "fetch my shoes"),
    ("change language", "Chinese", "none"): ("switch the language to chinese", "use chinese"),
    ("change language", "Korean", "none"): ("change the language to korean", "use korean"),
    ("change language", "English", "none"): ("set the language to english", "use english"),
    ("change language", "German", "none"): ("change the language to german", "use german"),
}


def build(root: Path, size: Size, seed: int) -> None:
    rng = random.Random(f"fluent-{seed}")
    voices = sources.voice_pool(seed + 3)
    n_tr, n_va, n_te = size.fsc_voices
    split_voices = {"train": voices[:n_tr], "valid": voices[n_tr : n_tr + n_va], "test": voices[n_tr + n_va : n_tr + n_va + n_te]}
    intents = list(INTENTS)
    rows: dict[str, list[dict]] = {s: [] for s in split_voices}
    jobs: list[tuple[Path, "sources.Voice", str]] = []
    for split, voices_ in split_voices.items():
        for voice in voices_:
            spk = hashlib.sha1(f"{voice.name}-{seed}".encode()).hexdigest()[:16]
            # training voices cover every intent (round robin), others sample intents
            chosen = [intents[(i + len(jobs)) % len(intents)] for i in range(size.fsc_utts)] if split == "train" \
                else rng.sample(intents, min(size.fsc_utts, len(intents)))
            for k, intent in enumerate(chosen):
                text = rng.choice(INTENTS[intent])
                rel = f"wavs/speakers/{spk}/{spk}-{k:04d}.wav"
                jobs.append((root / rel, voice, text))
                rows[split].append({"path": rel, "speakerId": spk, "transcription": text,
                                    "action": intent[0], "object": intent[1], "location": intent[2]})
    train_values = {slot: {r[slot] for r in rows["train"]} for slot in ("action", "object", "location")}
    for split in ("valid", "test"):  # keep only rows whose slot values s3prl can map
        rows[split] = [r for r in rows[split] if all(r[s] in train_values[s] for s in train_values)]
    keep = {r["path"] for split_rows in rows.values() for r in split_rows}
    jobs = [j for j in jobs if str(j[0].relative_to(root)) in keep]

    def render(job: tuple[Path, "sources.Voice", str]) -> np.ndarray:
        return audio.normalize(job[1].speak(job[2]))

    for (out, _, _), wav in zip(jobs, pmap(render, jobs, "fluent commands")):
        audio.write(out, wav)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        pd.DataFrame(split_rows).to_csv(root / "data" / f"{split}_data.csv")

    stats = []
    for split, split_rows in rows.items():
        secs = sum(sf.info(str(root / r["path"])).duration for r in split_rows)
        stats.append((split, len(split_rows), len({r["speakerId"] for r in split_rows}), fmt_hours(secs / 3600)))
    write_datasheet(root / "README.md", "Fluent Speech Commands-format corpus (IC)", {
        "Contents": table(("split", "utterances", "speakers", "duration"), stats)
        + f"\n\n{len(INTENTS)} intents; slots action / object / location as in FSC.",
        "How it was made": "Each utterance is one phrasing of an intent, spoken by a synthetic voice "
        "(espeak-ng accent x variant with its own pitch and rate, or flite). No real recording of these "
        "commands exists in the installable packages.",
        "Splits": "Speakers are disjoint across train/valid/test; training speakers cycle through all "
        "intents so every slot value of valid/test is known from train_data.csv.",
        "Voices": ", ".join(f"{s}: {', '.join(v.name for v in vs)}" for s, vs in split_voices.items()),
        "Sources and licences": sources.licence_table(("espeak-ng", "flite")),
    })
