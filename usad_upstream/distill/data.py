"""Distillation data: manifests, weighted domain sampling, crops, length-bucketed batches.

A manifest is a TSV (path, num_samples, sample_rate, domain) written once from audio headers.
Each epoch is planned up front from (seed, epoch) alone: which clips (sound and music repeated
by their domain weight), where each crop starts, and how crops are packed into micro-batches of
at most `batch_seconds / (world_size * grad_accum)` padded seconds. One optimizer step takes
`world_size * grad_accum` consecutive micro-batches; micro-batch j of a step goes to rank
j % world_size. The plan therefore does not depend on how a global batch is spread over
processes, and the sampler state (epoch, step) is all that an exact resume needs.

Files that cannot be read, are silent or too short are skipped, counted by kind and logged,
never fatal: a micro-batch loses the bad item (an emptied one is refilled with a random clip
chosen deterministically).
"""
from __future__ import annotations

import csv
import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence as SequenceABC
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..checkpoint import atomic_write
from ..frontend import MIN_SAMPLES, SAMPLE_RATE

log = logging.getLogger(__name__)

DOMAINS = ("speech", "sound", "music")
COLUMNS = ("path", "num_samples", "sample_rate", "domain")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".aif", ".aiff", ".au", ".w64", ".caf")
SKIP_KINDS = ("unreadable", "silent", "too_short")
MAX_REFILL_TRIES = 50


# ----------------------------------------------------------------------------- manifests
@dataclass(frozen=True)
class ManifestEntry:
    path: str
    num_samples: int
    sample_rate: int
    domain: str

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate


def find_audio(sources: Sequence["str | Path"]) -> list[Path]:
    """Audio files under directories (recursive, sorted), audio files given directly, and the
    entries of file lists (any other file: one path per line, relative to the list, # comments)."""
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found += sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        elif source.is_file() and source.suffix.lower() in AUDIO_SUFFIXES:
            found.append(source)
        elif source.is_file():
            for line in source.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    path = Path(line)
                    found.append(path if path.is_absolute() else source.parent / path)
        else:
            raise ValueError(f"manifest source not found: {source} (give directories, audio files or file lists)")
    return found


def build_manifest(
    sources: Sequence["str | Path"], domain: str, min_seconds: float = 0.0
) -> tuple[list[ManifestEntry], Counter]:
    """Read every file's header with soundfile; unreadable and too-short files are counted, not kept."""
    import soundfile as sf

    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {list(DOMAINS)}")
    entries, skipped = [], Counter()
    for path in find_audio(sources):
        try:
            info = sf.info(str(path))
        except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError or OSError by cause
            skipped["unreadable"] += 1
            log.warning("skipping unreadable %s: %s", path, exc)
            continue
        if info.frames <= 0 or info.frames < min_seconds * info.samplerate:
            skipped["too_short"] += 1
            continue
        entries.append(ManifestEntry(str(path.resolve()), int(info.frames), int(info.samplerate), domain))
    return entries, skipped


def write_manifest(entries: Sequence[ManifestEntry], path: "str | Path") -> Path:
    """Write the TSV atomically (header + one row per file)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(COLUMNS)
            for e in entries:
                writer.writerow([e.path, e.num_samples, e.sample_rate, e.domain])

    atomic_write(path, write)
    return Path(path)


class Manifest:
    """Columnar manifest: numpy arrays instead of one Python object per file, so tens of millions
    of files fit in memory once and DataLoader workers share them copy-on-write.
    `manifest[i]` is a ManifestEntry; iteration yields all of them."""

    def __init__(self, paths: Sequence[str], num_samples: Sequence[int], sample_rate: Sequence[int], domain: Sequence[int]) -> None:
        encoded = [p.encode() for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.num_samples = np.asarray(num_samples, dtype=np.int64)
        self.sample_rate = np.asarray(sample_rate, dtype=np.int64)
        self.domain = np.asarray(domain, dtype=np.int8)  # index into DOMAINS

    @classmethod
    def from_entries(cls, entries: Sequence[ManifestEntry]) -> "Manifest":
        return cls([e.path for e in entries], [e.num_samples for e in entries], [e.sample_rate for e in entries],
                   [DOMAINS.index(e.domain) for e in entries])

    @classmethod
    def concat(cls, parts: Sequence["Manifest"]) -> "Manifest":
        """One manifest from several (arrays joined; no per-file Python objects)."""
        out = cls([], [], [], [])
        if not parts:
            return out
        shifts = np.cumsum([0] + [m.blob.shape[0] for m in parts[:-1]])
        out.offsets = np.concatenate([np.zeros(1, dtype=np.int64)] + [m.offsets[1:] + s for m, s in zip(parts, shifts)])
        out.blob = np.concatenate([m.blob for m in parts])
        for name in ("num_samples", "sample_rate", "domain"):
            setattr(out, name, np.concatenate([getattr(m, name) for m in parts]))
        return out

    def __len__(self) -> int:
        return int(self.num_samples.shape[0])

    def path(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()

    def __getitem__(self, i: int) -> ManifestEntry:
        return ManifestEntry(self.path(i), int(self.num_samples[i]), int(self.sample_rate[i]), DOMAINS[self.domain[i]])

    def __iter__(self) -> Iterator[ManifestEntry]:
        return (self[i] for i in range(len(self)))

    @property
    def seconds(self) -> float:
        return float((self.num_samples / self.sample_rate).sum())


def read_manifest(path: "str | Path") -> Manifest:
    """Parse and validate a manifest TSV (pandas, fast for millions of rows); errors name the line."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest not found: {path}; create one with `usad manifest build DIR --domain speech -o {path}`")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a tab-separated manifest ({exc})") from None
    if tuple(df.columns) != COLUMNS:
        raise ValueError(f"{path}: header must be {'<TAB>'.join(COLUMNS)}, got {list(df.columns)}")
    numbers = {c: pd.to_numeric(df[c], errors="coerce") for c in ("num_samples", "sample_rate")}
    for c, values in numbers.items():
        bad = values.isna() | (values <= 0) | (values != values.round())
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise ValueError(f"{path}:{row + 2}: {c} must be an integer > 0, got {df[c].iloc[row]!r}")
    domain = df["domain"].map({d: i for i, d in enumerate(DOMAINS)})
    if domain.isna().any():
        row = int(np.argmax(domain.isna().to_numpy()))
        raise ValueError(f"{path}:{row + 2}: domain must be one of {list(DOMAINS)}, got {df['domain'].iloc[row]!r}")
    return Manifest(df["path"].tolist(), numbers["num_samples"].to_numpy(np.int64),
                    numbers["sample_rate"].to_numpy(np.int64), domain.to_numpy(np.int8))


# ----------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    """The `data:` section of a distillation config."""

    manifests: list[str] = field(default_factory=list)
    domain_weights: dict[str, float] = field(default_factory=lambda: {"speech": 1.0, "sound": 2.0, "music": 2.0})
    # If set, replaces domain_weights: speech gets this share of each epoch's crop-seconds
    # (sound and music weight 1), computed from the manifests (PAPER_SPEECH_SHARE = the paper's mix).
    speech_share: "float | None" = None
    max_seconds: float = 15.0  # longest crop
    min_seconds: float = 1.0  # shorter clips are skipped
    crop: str = "random"  # "random": one random crop per clip and epoch; "segments": fixed consecutive pieces
    silence_threshold: float = 1e-4  # crops whose peak |sample| is below are skipped as silent
    bucket_pool: int = 64  # micro-batches' worth of clips sorted by length together
    num_workers: int = 0  # audio-loading worker processes per rank

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"data: unknown key(s) {unknown}; known keys are {sorted(known)}")
        cfg = cls(**dict(data))
        if isinstance(cfg.manifests, str):
            cfg.manifests = [cfg.manifests]
        if cfg.crop not in ("random", "segments"):
            raise ValueError(f"data.crop must be 'random' or 'segments', got {cfg.crop!r}")
        bad = sorted(set(cfg.domain_weights) - set(DOMAINS))
        if bad or any(w < 0 for w in cfg.domain_weights.values()):
            raise ValueError(f"data.domain_weights: keys must be in {list(DOMAINS)} with weights >= 0, got {cfg.domain_weights}")
        if cfg.speech_share is not None and not (isinstance(cfg.speech_share, (int, float)) and 0 < cfg.speech_share < 1):
            raise ValueError(f"data.speech_share must be a number between 0 and 1 (exclusive), got {cfg.speech_share!r}")
        if not 0 < cfg.min_seconds <= cfg.max_seconds:
            raise ValueError(f"data: need 0 < min_seconds <= max_seconds, got {cfg.min_seconds} and {cfg.max_seconds}")
        if cfg.min_seconds * SAMPLE_RATE < MIN_SAMPLES:
            raise ValueError(f"data.min_seconds must be >= {MIN_SAMPLES / SAMPLE_RATE} s (one fbank window)")
        return cfg


# Mix126k-B, the paper's distillation data: 90.7k h of speech and 35.3k h of sound + music,
# the latter upsampled 2x, so speech is 56% of what the student hears.
PAPER_SPEECH_SHARE = 90.7 / (90.7 + 2 * 35.3)


def speech_share_weights(manifest: "Manifest | Sequence[ManifestEntry]", share: float, config: DataConfig) -> dict[str, float]:
    """Domain weights (sound and music 1) under which speech is `share` of the seconds of crops
    an epoch draws from this manifest: the paper's mix ratio reproduced on a pool of any make-up."""
    m = manifest if isinstance(manifest, Manifest) else Manifest.from_entries(list(manifest))
    if not 0 < share < 1:
        raise ValueError(f"speech share must be between 0 and 1, got {share}")
    seconds = m.num_samples / m.sample_rate
    crops = np.where(seconds >= config.min_seconds, np.minimum(seconds, config.max_seconds), 0.0)
    speech = float(crops[m.domain == DOMAINS.index("speech")].sum())
    other = float(crops[m.domain != DOMAINS.index("speech")].sum())
    if speech == 0 or other == 0:
        raise ValueError(f"a speech share needs both speech and non-speech clips of >= {config.min_seconds} s; "
                         f"the manifest has {speech:.0f} s of speech crops and {other:.0f} s of others")
    return {"speech": round(share / (1 - share) * other / speech, 3), "sound": 1.0, "music": 1.0}


# ----------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Crop:
    """One piece of one manifest entry: `frames` source samples from `start`; `samples` at 16 kHz."""

    index: int
    start: int
    frames: int
    samples: int


@dataclass
class Plan:
    """Crops as parallel arrays; micro-batch j holds items lo[j]:hi[j] (a contiguous, length-sorted run)."""

    index: np.ndarray
    start: np.ndarray
    frames: np.ndarray
    samples: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    def batch(self, j: int) -> list[Crop]:
        return [
            Crop(int(self.index[i]), int(self.start[i]), int(self.frames[i]), int(self.samples[i]))
            for i in range(int(self.lo[j]), int(self.hi[j]))
        ]

    def batches(self) -> list[list[Crop]]:
        return [self.batch(j) for j in range(len(self))]


def pack(
    index: np.ndarray, start: np.ndarray, frames: np.ndarray, samples: np.ndarray, cap: int, pool: int
) -> Plan:
    """Length bucketing: within consecutive pools of `pool` crops, sort longest first and cut
    micro-batches whose padded size (count x longest) stays within `cap` samples."""
    order = np.lexsort((-samples, np.arange(samples.shape[0]) // pool))
    index, start, frames, samples = index[order], start[order], frames[order], samples[order]
    lo, hi = [], []
    for p0 in range(0, samples.shape[0], pool):
        p, end = p0, min(p0 + pool, samples.shape[0])
        while p < end:  # samples[p] is the longest of what is left in this pool
            q = min(end, p + max(1, cap // int(samples[p])))
            lo.append(p), hi.append(q)
            p = q
    return Plan(index, start, frames, samples, np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64))


class BatchPlanner:
    """Deterministic epoch plans from (seed, epoch): which crops, and how they form micro-batches."""

    def __init__(self, manifest: "Manifest | Sequence[ManifestEntry]", config: DataConfig, micro_seconds: float, seed: int) -> None:
        if micro_seconds < config.max_seconds:
            raise ValueError(
                f"a micro-batch holds batch_seconds / (world_size * grad_accum) = {micro_seconds:.2f} s, "
                f"less than one crop of data.max_seconds = {config.max_seconds} s; raise batch_seconds or lower max_seconds"
            )
        self.entries = manifest if isinstance(manifest, Manifest) else Manifest.from_entries(list(manifest))
        self.config = config
        self.micro_samples = int(micro_seconds * SAMPLE_RATE)
        self.seed = seed
        m = self.entries
        usable = m.num_samples >= config.min_seconds * m.sample_rate
        self.skipped = Counter({"too_short": int((~usable).sum())})
        files = np.nonzero(usable)[0]
        if config.crop == "random":  # a unit is a whole file; a random crop of it is drawn each epoch
            self.unit_index, self.unit_start, self.unit_frames = files, np.zeros_like(files), m.num_samples[files]
        else:  # a unit is one of the consecutive max_seconds pieces of a file
            seg = (config.max_seconds * m.sample_rate[files]).astype(np.int64)
            reps = -(-m.num_samples[files] // seg)
            index = np.repeat(files, reps)
            piece = np.arange(index.shape[0]) - np.repeat(np.cumsum(reps) - reps, reps)
            start = piece * np.repeat(seg, reps)
            frames = np.minimum(np.repeat(seg, reps), m.num_samples[index] - start)
            keep = frames >= config.min_seconds * m.sample_rate[index]
            self.unit_index, self.unit_start, self.unit_frames = index[keep], start[keep], frames[keep]
        weights = config.domain_weights
        if config.speech_share is not None:
            weights = speech_share_weights(self.entries, config.speech_share, config)
        self.domain_weights = weights
        by_domain = np.asarray([weights.get(d, 1.0) for d in DOMAINS])
        self.unit_weight = by_domain[m.domain[self.unit_index]]
        if self.skipped["too_short"]:
            log.warning("%d manifest files are shorter than %.2f s and are skipped", self.skipped["too_short"], config.min_seconds)

    @property
    def num_units(self) -> int:
        return int(self.unit_index.shape[0])

    def crops(self, units: np.ndarray, rng: "np.random.Generator | None") -> tuple[np.ndarray, ...]:
        """(index, start, frames, samples) of crops of `units`: a random max_seconds window of each
        file in `random` mode (rng needed), the unit itself in `segments` mode."""
        index, start, frames = self.unit_index[units], self.unit_start[units], self.unit_frames[units]
        sr = self.entries.sample_rate[index]
        if self.config.crop == "random":
            assert rng is not None
            longest = (self.config.max_seconds * sr).astype(np.int64)
            slack = np.maximum(frames - longest, 0)
            start = start + (rng.random(units.shape[0]) * (slack + 1)).astype(np.int64)
            frames = np.minimum(frames, longest)
        samples = -(-frames * SAMPLE_RATE // sr)  # ceil: the length after resampling to 16 kHz
        return index, start, frames, samples

    def epoch(self, epoch: int) -> Plan:
        """All micro-batches of one epoch, in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        w = self.unit_weight
        repeats = np.floor(w).astype(np.int64) + (rng.random(w.shape[0]) < (w - np.floor(w)))
        order = rng.permutation(np.repeat(np.arange(self.num_units), repeats))
        longest = int(self.config.max_seconds * SAMPLE_RATE)
        pool = self.config.bucket_pool * max(1, self.micro_samples // longest)
        plan = pack(*self.crops(order, rng), self.micro_samples, pool)
        shuffle = rng.permutation(len(plan))
        plan.lo, plan.hi = plan.lo[shuffle], plan.hi[shuffle]
        return plan

    def refill(self, epoch: int, position: int) -> Iterator[Crop]:
        """Replacement crops for an emptied micro-batch, random but fixed by (seed, epoch, position)."""
        rng = np.random.default_rng([self.seed, epoch, position, 1])
        while True:
            index, start, frames, samples = self.crops(rng.integers(self.num_units, size=1), rng)
            yield Crop(int(index[0]), int(start[0]), int(frames[0]), int(samples[0]))


# ----------------------------------------------------------------------------- loading
class SkippedFile(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def load_crop(entry: ManifestEntry, crop: Crop, silence_threshold: float, min_samples: int) -> torch.Tensor:
    """16 kHz mono float32 [N] for one crop, or SkippedFile(kind) when it must not be trained on."""
    import soundfile as sf

    try:
        data, sr = sf.read(entry.path, start=crop.start, frames=crop.frames, dtype="float32", always_2d=True)
    except Exception as exc:  # any decoder failure: missing, truncated, corrupt, not audio
        raise SkippedFile("unreadable", f"{entry.path}: {exc}") from None
    if sr != entry.sample_rate:
        raise SkippedFile("unreadable", f"{entry.path}: sample rate {sr}, manifest says {entry.sample_rate}")
    if not np.isfinite(data).all():
        raise SkippedFile("unreadable", f"{entry.path}: non-finite samples")
    wav = torch.from_numpy(data.mean(axis=1))
    if sr != SAMPLE_RATE:
        from ..compat import import_torchaudio

        wav = import_torchaudio().functional.resample(wav, sr, SAMPLE_RATE)
    if wav.numel() < min_samples:
        raise SkippedFile("too_short", f"{entry.path}: {wav.numel()} samples at 16 kHz from offset {crop.start}")
    if float(wav.abs().max()) < silence_threshold:
        raise SkippedFile("silent", f"{entry.path}: silent crop at offset {crop.start}")
    return wav


def pad_batch(wavs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([w.numel() for w in wavs], dtype=torch.long)
    out = torch.zeros(len(wavs), int(lens.max()))
    for i, w in enumerate(wavs):
        out[i, : w.numel()] = w
    return out, lens


class MicroBatches(torch.utils.data.Dataset):
    """Loads planned micro-batches (in DataLoader workers); item i -> dict with `wavs`, `lens`,
    `crops`, `skipped` (Counter of this batch's skips) and, with a target cache, `targets`.
    With refill=False an emptied micro-batch comes back with `wavs` None instead of refilled."""

    def __init__(
        self,
        planner: BatchPlanner,
        batches: Sequence[tuple[int, int, list[Crop]]],  # (epoch, position in epoch, crops)
        cache: "Any | None" = None,
        refill: bool = True,
    ) -> None:
        self.planner = planner
        self.batches = batches
        self.cache = cache
        self.refill = refill
        self.min_samples = int(planner.config.min_seconds * SAMPLE_RATE)

    def __len__(self) -> int:
        return len(self.batches)

    def _load(self, crop: Crop) -> tuple[torch.Tensor, "dict | None"]:
        entry = self.planner.entries[crop.index]
        wav = load_crop(entry, crop, self.planner.config.silence_threshold, self.min_samples)
        targets = None
        if self.cache is not None:
            targets = self.cache.read(entry, crop)
            if targets is None:
                raise SkippedFile("unreadable", f"{entry.path}: no cached targets for offset {crop.start}")
        return wav, targets

    def __getitem__(self, i: int) -> dict[str, Any]:
        epoch, position, crops = self.batches[i]
        skipped: Counter = Counter()
        kept, wavs, targets = [], [], []

        def take(crop: Crop) -> None:
            try:
                wav, tgt = self._load(crop)
            except SkippedFile as skip:
                skipped[skip.kind] += 1
                log.warning("skipped (%s): %s", skip.kind, skip)
                return
            kept.append(crop), wavs.append(wav), targets.append(tgt)

        for crop in crops:
            take(crop)
        if not kept and not self.refill:
            return {"wavs": None, "lens": None, "crops": [], "skipped": skipped}
        refill = self.planner.refill(epoch, position)
        for _ in range(MAX_REFILL_TRIES):
            if kept:
                break
            take(next(refill))
        if not kept:
            raise ValueError(f"{MAX_REFILL_TRIES} random clips in a row could not be used ({dict(skipped)}): check the manifests")
        wav, lens = pad_batch(wavs)
        out = {"wavs": wav, "lens": lens, "crops": kept, "skipped": skipped}
        if self.cache is not None:
            out["targets"] = self.cache.collate(targets)
        return out


class RankBatches(SequenceABC):
    """This rank's micro-batches from `first_step` on: (epoch, position in the plan, crops), built lazily."""

    def __init__(self, plan: Plan, epoch: int, first_step: int, steps: int, world_size: int, rank: int, grad_accum: int) -> None:
        self.plan, self.epoch, self.first_step, self.steps = plan, epoch, first_step, steps
        self.world_size, self.rank, self.grad_accum = world_size, rank, grad_accum

    def __len__(self) -> int:
        return (self.steps - self.first_step) * self.grad_accum

    def __getitem__(self, i: int) -> tuple[int, int, list[Crop]]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        step, a = self.first_step + i // self.grad_accum, i % self.grad_accum
        position = step * self.world_size * self.grad_accum + a * self.world_size + self.rank
        return self.epoch, position, self.plan.batch(position)


class DistillData:
    """Per-rank stream of optimizer steps, each a list of `grad_accum` loaded micro-batches.

    `state_dict()` is (epoch, step): the next step to hand out. Restoring it replays the same plan.
    """

    def __init__(
        self,
        entries: "Manifest | Sequence[ManifestEntry]",
        config: DataConfig,
        batch_seconds: float,
        seed: int,
        world_size: int = 1,
        rank: int = 0,
        grad_accum: int = 1,
        cache: "Any | None" = None,
    ) -> None:
        self.group = world_size * grad_accum
        self.planner = BatchPlanner(entries, config, batch_seconds / self.group, seed)
        self.world_size, self.rank, self.grad_accum = world_size, rank, grad_accum
        self.cache = cache
        self.epoch, self.step = 0, 0
        self._plan: "tuple[int, Plan] | None" = None

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self._epoch_plan(epoch)) // self.group

    def _epoch_plan(self, epoch: int) -> Plan:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.planner.epoch(epoch))
        return self._plan[1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def _rank_batches(self, epoch: int, first_step: int) -> "RankBatches":
        return RankBatches(self._epoch_plan(epoch), epoch, first_step, self.steps_in_epoch(epoch), self.world_size, self.rank, self.grad_accum)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        while True:
            if self.steps_in_epoch(self.epoch) == 0:
                too_short, files = self.planner.skipped["too_short"], len(self.planner.entries.num_samples)
                lever = (f"{too_short} of the {files} manifest files are shorter than data.min_seconds = "
                         f"{self.planner.config.min_seconds} s and were skipped: lower data.min_seconds (e.g. "
                         f"data.min_seconds=0.5) or add longer files" if too_short else "add data or lower batch_seconds")
                raise ValueError(
                    f"one epoch gives {len(self._epoch_plan(self.epoch))} micro-batches, fewer than the "
                    f"{self.group} (world_size x grad_accum) that one step needs: {lever}"
                )
            if self.step >= self.steps_in_epoch(self.epoch):
                self.epoch, self.step = self.epoch + 1, 0
                continue
            dataset = MicroBatches(self.planner, self._rank_batches(self.epoch, self.step), self.cache)
            workers = self.planner.config.num_workers
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=None, shuffle=False, num_workers=workers,
                prefetch_factor=2 if workers else None,
                generator=torch.Generator().manual_seed(self.epoch),  # leaves the global RNG (dropout) untouched
            )
            group: list[dict[str, Any]] = []
            for micro in loader:
                group.append(micro)
                if len(group) == self.grad_accum:
                    self.step += 1
                    yield group
                    group = []
            self.epoch, self.step = self.epoch + 1, 0
