"""LibriMix-style 2-speaker diarization corpus for SD (s3prl diarization recipe), mixed from the
local LibriSpeech-format corpus (each LibriSpeech split feeds the SD split of the same role,
so SD test speakers, the real Tux Paint reader included, are never heard in SD training).

  <root>/{train,dev,test}/  Kaldi data dirs as s3prl's diarization expert reads them:
      wav.scp (rec -> absolute wav path), segments (utt rec start end), utt2spk, spk2utt,
      reco2dur (rec -> seconds), rttm (SPEAKER lines, for dscore / md-eval)
  <root>/wav/{train,dev,test}/<rec>.wav

A recording sums two utterances of two different speakers; the second starts part-way into
the first (partial overlap) or after it (no overlap, 1 in 5). Segments are each source's
speech regions (energy-based), so pauses inside an utterance are not labelled as speech.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import audio, sources
from .common import Size, fmt_hours, pmap, table, write_datasheet
from .librispeech import SPLITS as LIBRISPEECH_SPLITS

SPLITS = ("train", "dev", "test")
LEVEL_DBFS = (-33.0, -25.0)  # per-source level, LibriMix's loudness range
OVERLAP_START = (0.3, 0.8)  # second source starts at this fraction of the first
NO_OVERLAP = 0.2  # share of recordings whose sources do not overlap
FRAME_S, FLOOR_DB, MIN_GAP_S, MIN_SEG_S = 0.02, -35.0, 0.3, 0.1


def librispeech_utterances(libri: Path, split: str) -> dict[str, list[Path]]:
    """speaker id -> flac files of one LibriSpeech split."""
    out: dict[str, list[Path]] = {}
    for flac in sorted((libri / split).glob("*/*/*.flac")):
        out.setdefault(flac.parent.parent.name, []).append(flac)
    if len(out) < 2:
        raise ValueError(f"{libri / split}: SD mixtures need at least 2 speakers, found {len(out)}")
    return out


def speech_regions(wav: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds where the clip is within FLOOR_DB of its loudest 20 ms frame;
    gaps shorter than MIN_GAP_S are bridged, regions shorter than MIN_SEG_S dropped."""
    hop = int(FRAME_S * audio.SR)
    frames = wav[: len(wav) // hop * hop].reshape(-1, hop)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)
    loud = 20 * np.log10(rms / rms.max()) > FLOOR_DB
    regions: list[list[float]] = []
    for i in np.flatnonzero(loud):
        start, end = i * FRAME_S, (i + 1) * FRAME_S
        if regions and start - regions[-1][1] < MIN_GAP_S:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    return [(round(s, 2), round(e, 2)) for s, e in regions if e - s >= MIN_SEG_S]


@dataclass(frozen=True)
class Mixture:
    split: str
    rec: str
    picks: list[tuple[str, Path]]  # (speaker, utterance) x 2
    second: tuple[str, float]  # ("into", fraction of the first source) or ("after", gap seconds)
    levels: list[float]  # dBFS per source
    lead: float  # seconds before the first source


def _at_level(wav: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt((wav.astype(np.float64) ** 2).mean())) or 1e-6
    return (wav * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def build(root: Path, size: Size, seed: int, libri: Path, final_root: Path) -> None:
    """`libri`: the built LibriSpeech-format corpus; `final_root`: where this folder will live
    (wav.scp holds absolute paths, as Kaldi's)."""
    rng = random.Random(f"librimix-{seed}")
    plans: list[Mixture] = []
    for split, libri_split, n in zip(SPLITS, LIBRISPEECH_SPLITS, size.sd_mixtures):
        speakers = librispeech_utterances(libri, libri_split)
        unused = {s: rng.sample(files, len(files)) for s, files in speakers.items()}
        for k in range(n):
            pair = rng.sample(sorted(speakers), 2)
            picks = []
            for spk in pair:
                if not unused[spk]:  # every utterance is used once before any is reused
                    unused[spk] = rng.sample(speakers[spk], len(speakers[spk]))
                picks.append((spk, unused[spk].pop()))
            # the second source starts part-way into the first, or after it (gap in seconds)
            second = ("after", rng.uniform(0.2, 1.0)) if rng.random() < NO_OVERLAP else ("into", rng.uniform(*OVERLAP_START))
            plans.append(Mixture(split, f"{split}_{k:04d}_{pair[0]}_{pair[1]}", picks, second,
                                 [rng.uniform(*LEVEL_DBFS) for _ in pair], rng.uniform(0.2, 0.6)))

    def render(plan: Mixture) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        srcs = [_at_level(audio.trim(audio.load(path)), level) for (_, path), level in zip(plan.picks, plan.levels)]
        first = len(srcs[0]) / audio.SR
        how, value = plan.second
        offsets = [plan.lead, plan.lead + (first + value if how == "after" else value * first)]
        total = max(int(round(o * audio.SR)) + len(s) for o, s in zip(offsets, srcs)) + int(0.3 * audio.SR)
        mix = np.zeros(total, dtype=np.float32)
        segs = []
        for (spk, _), src, off in zip(plan.picks, srcs, offsets):
            begin = int(round(off * audio.SR))
            mix[begin : begin + len(src)] += src
            segs += [(spk, round(off + s, 2), round(off + e, 2)) for s, e in speech_regions(src)]
        peak = float(np.abs(mix).max())
        return (mix * (0.9 / peak) if peak > 0.9 else mix), segs

    results = pmap(render, plans, "librimix_sd")
    stats = []
    for split in SPLITS:
        mine = [(p, r) for p, r in zip(plans, results) if p.split == split]
        files: dict[str, list[str]] = {n: [] for n in ("wav.scp", "segments", "utt2spk", "reco2dur", "rttm")}
        spk2utt: dict[str, list[str]] = {}
        overlap = speech = 0.0
        for plan, (mix, segs) in mine:
            rec = plan.rec
            wav = audio.write(root / "wav" / split / f"{rec}.wav", mix)
            files["wav.scp"].append(f"{rec} {(final_root / wav.relative_to(root)).resolve()}")
            files["reco2dur"].append(f"{rec} {len(mix) / audio.SR:.3f}")
            for k, (spk, start, end) in enumerate(sorted(segs, key=lambda s: (s[1], s[0]))):
                utt = f"{spk}_{rec}_{k:03d}"
                files["segments"].append(f"{utt} {rec} {start:.2f} {end:.2f}")
                files["utt2spk"].append(f"{utt} {spk}")
                files["rttm"].append(f"SPEAKER {rec} 1 {start:.2f} {end - start:.2f} <NA> <NA> {spk} <NA> <NA>")
                spk2utt.setdefault(spk, []).append(utt)
            o, s = _overlap_seconds(segs)
            overlap, speech = overlap + o, speech + s
        for name, lines in files.items():
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / split / name).write_text("".join(f"{line}\n" for line in sorted(lines)))
        (root / split / "spk2utt").write_text("".join(f"{s} {' '.join(sorted(u))}\n" for s, u in sorted(spk2utt.items())))
        seconds = sum(len(m) for _, (m, _) in mine) / audio.SR
        stats.append((split, len(mine), len(spk2utt), fmt_hours(seconds / 3600), f"{100 * overlap / max(speech, 1e-9):.0f}%"))
    write_datasheet(root / "README.md", "LibriMix-style 2-speaker diarization corpus (SD)", {
        "Contents": table(("split", "recordings", "speakers", "duration", "overlapped speech"), stats),
        "How it was made": (
            "Each recording sums one utterance of each of two different speakers of the matching "
            "LibriSpeech-format split (train-clean-100 -> train, dev-clean -> dev, test-clean -> test; its "
            "datasheet lists the voices, and test-clean's real Tux Paint reader is in SD test). Each source is "
            f"set to a random level in {LEVEL_DBFS} dBFS (LibriMix's loudness range; RMS here, not LUFS). The "
            f"first starts after 0.2-0.6 s; the second starts at {OVERLAP_START[0]:.0%}-{OVERLAP_START[1]:.0%} of "
            f"the first (partial overlap) or, in {NO_OVERLAP:.0%} of recordings, 0.2-1 s after it ends. No noise "
            "is added (Libri2Mix clean). Segments are each source's speech regions: 20 ms frames within "
            f"{-FLOOR_DB:.0f} dB of the source's loudest frame, gaps under {MIN_GAP_S} s bridged; so the labels "
            "follow the speech, not the utterance boundaries."
        ),
        "Files for s3prl": "`datarc`'s `{train,dev,test}_dir` = the split folders (KaldiData reads wav.scp, "
        "segments, utt2spk, spk2utt, reco2dur); `rttm` is for dscore/md-eval. wav.scp paths are absolute "
        f"({final_root.resolve()}): a moved corpus must have them rewritten.",
        "Splits": "Speakers are disjoint across train/dev/test (they are LibriSpeech's splits).",
        "Sources and licences": sources.licence_table(("espeak-ng", "flite", "tuxpaint-stamps-default")),
    })


def _overlap_seconds(segs: list[tuple[str, float, float]]) -> tuple[float, float]:
    """(seconds where both speakers talk, seconds where anyone talks), on a 10 ms grid."""
    if not segs:
        return 0.0, 0.0
    end = max(e for _, _, e in segs)
    grid = np.zeros((2, int(end * 100) + 1), dtype=bool)
    speakers = sorted({s for s, _, _ in segs})
    for spk, s, e in segs:
        grid[speakers.index(spk), int(s * 100) : int(e * 100)] = True
    return float((grid[0] & grid[-1]).sum() / 100 if len(speakers) == 2 else 0.0), float(grid.any(0).sum() / 100)
