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
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
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


def read_manifest(path: "str | Path") -> list[ManifestEntry]:
    """Parse and validate a manifest; every problem names the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest not found: {path}; create one with `usad manifest build DIR --domain speech -o {path}`")
    entries = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None or tuple(header) != COLUMNS:
            raise ValueError(f"{path}: header must be {'<TAB>'.join(COLUMNS)}, got {header}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(COLUMNS):
                raise ValueError(f"{path}:{lineno}: expected {len(COLUMNS)} tab-separated fields, got {len(row)}")
            try:
                num_samples, sample_rate = int(row[1]), int(row[2])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: num_samples and sample_rate must be integers, got {row[1:3]}") from None
            if num_samples <= 0 or sample_rate <= 0:
                raise ValueError(f"{path}:{lineno}: num_samples and sample_rate must be > 0, got {row[1:3]}")
            if row[3] not in DOMAINS:
                raise ValueError(f"{path}:{lineno}: domain must be one of {list(DOMAINS)}, got {row[3]!r}")
            entries.append(ManifestEntry(row[0], num_samples, sample_rate, row[3]))
    return entries


# ----------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    """The `data:` section of a distillation config."""

    manifests: list[str] = field(default_factory=list)
    domain_weights: dict[str, float] = field(default_factory=lambda: {"speech": 1.0, "sound": 2.0, "music": 2.0})
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
        if not 0 < cfg.min_seconds <= cfg.max_seconds:
            raise ValueError(f"data: need 0 < min_seconds <= max_seconds, got {cfg.min_seconds} and {cfg.max_seconds}")
        if cfg.min_seconds * SAMPLE_RATE < MIN_SAMPLES:
            raise ValueError(f"data.min_seconds must be >= {MIN_SAMPLES / SAMPLE_RATE} s (one fbank window)")
        return cfg


# ----------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Crop:
    """One piece of one manifest entry: `frames` source samples from `start`; `samples` at 16 kHz."""

    index: int
    start: int
    frames: int
    samples: int


def resampled_length(frames: int, sample_rate: int) -> int:
    return math.ceil(frames * SAMPLE_RATE / sample_rate)


class BatchPlanner:
    """Deterministic epoch plans: a list of micro-batches (lists of Crops) from (seed, epoch)."""

    def __init__(self, entries: Sequence[ManifestEntry], config: DataConfig, micro_seconds: float, seed: int) -> None:
        if micro_seconds < config.max_seconds:
            raise ValueError(
                f"a micro-batch holds batch_seconds / (world_size * grad_accum) = {micro_seconds:.2f} s, "
                f"less than one crop of data.max_seconds = {config.max_seconds} s; raise batch_seconds or lower max_seconds"
            )
        self.entries = list(entries)
        self.config = config
        self.micro_samples = int(micro_seconds * SAMPLE_RATE)
        self.seed = seed
        self.skipped = Counter()
        idx, start, frames = [], [], []
        for i, e in enumerate(self.entries):
            if e.seconds < config.min_seconds:
                self.skipped["too_short"] += 1
                continue
            if config.crop == "random":
                idx.append(i), start.append(0), frames.append(e.num_samples)
                continue
            seg = int(config.max_seconds * e.sample_rate)
            for s in range(0, e.num_samples, seg):
                n = min(seg, e.num_samples - s)
                if n >= config.min_seconds * e.sample_rate:
                    idx.append(i), start.append(s), frames.append(n)
        self.unit_index = np.asarray(idx, dtype=np.int64)
        self.unit_start = np.asarray(start, dtype=np.int64)
        self.unit_frames = np.asarray(frames, dtype=np.int64)
        weights = config.domain_weights
        self.unit_weight = np.asarray([weights.get(self.entries[i].domain, 1.0) for i in idx], dtype=np.float64)
        if self.skipped["too_short"]:
            log.warning("%d manifest files are shorter than %.2f s and are skipped", self.skipped["too_short"], config.min_seconds)

    @property
    def num_units(self) -> int:
        return int(self.unit_index.shape[0])

    def crop(self, unit: int, rng: np.random.Generator) -> Crop:
        """A crop of one unit: random position in `random` mode, the whole segment otherwise."""
        i = int(self.unit_index[unit])
        sr = self.entries[i].sample_rate
        frames = int(self.unit_frames[unit])
        start = int(self.unit_start[unit])
        if self.config.crop == "random":
            longest = int(self.config.max_seconds * sr)
            if frames > longest:
                start = int(rng.integers(0, frames - longest + 1))
                frames = longest
        return Crop(i, start, frames, resampled_length(frames, sr))

    def epoch(self, epoch: int) -> list[list[Crop]]:
        """All micro-batches of one epoch, in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        w = self.unit_weight
        repeats = np.floor(w).astype(np.int64) + (rng.random(w.shape[0]) < (w - np.floor(w)))
        order = rng.permutation(np.repeat(np.arange(self.num_units), repeats))
        crops = [self.crop(int(u), rng) for u in order]
        batches: list[list[Crop]] = []
        pool = max(1, self.config.bucket_pool * max(1, self.micro_samples // max(1, int(self.config.max_seconds * SAMPLE_RATE))))
        for lo in range(0, len(crops), pool):
            chunk = sorted(crops[lo : lo + pool], key=lambda c: -c.samples)
            batch: list[Crop] = []
            for c in chunk:  # longest first, so batch[0] sets the padded length
                if batch and (len(batch) + 1) * batch[0].samples > self.micro_samples:
                    batches.append(batch)
                    batch = []
                batch.append(c)
            if batch:
                batches.append(batch)
        return [batches[j] for j in rng.permutation(len(batches))]

    def refill(self, epoch: int, position: int) -> Iterator[Crop]:
        """Replacement crops for an emptied micro-batch, random but fixed by (seed, epoch, position)."""
        rng = np.random.default_rng([self.seed, epoch, position, 1])
        while True:
            yield self.crop(int(rng.integers(self.num_units)), rng)


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
        batches: Sequence[tuple[int, int, list[Crop]]],
        cache: "Any | None" = None,
        refill: bool = True,
    ) -> None:
        self.planner = planner
        self.batches = list(batches)  # (epoch, position in epoch, crops)
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


class DistillData:
    """Per-rank stream of optimizer steps, each a list of `grad_accum` loaded micro-batches.

    `state_dict()` is (epoch, step): the next step to hand out. Restoring it replays the same plan.
    """

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
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
        self._plan: "tuple[int, list[list[Crop]]] | None" = None

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self._epoch_plan(epoch)) // self.group

    def _epoch_plan(self, epoch: int) -> list[list[Crop]]:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.planner.epoch(epoch))
        return self._plan[1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def _rank_batches(self, epoch: int, first_step: int) -> list[tuple[int, int, list[Crop]]]:
        plan = self._epoch_plan(epoch)
        out = []
        for step in range(first_step, len(plan) // self.group):
            for a in range(self.grad_accum):
                pos = step * self.group + a * self.world_size + self.rank
                out.append((epoch, pos, plan[pos]))
        return out

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        while True:
            if self.steps_in_epoch(self.epoch) == 0:
                raise ValueError(
                    f"one epoch gives {len(self._epoch_plan(self.epoch))} micro-batches, fewer than the "
                    f"{self.group} (world_size x grad_accum) that one step needs: add data or lower batch_seconds"
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
