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

At scale (tens of millions of clips) nothing here holds a Python object per clip: a manifest is
parsed once into a columnar copy beside it (`M.tsv.columns/`, numpy files) that every process
memory-maps, so the ranks of a node share one copy in the page cache; an epoch's plan stores
one int32 per crop (crop starts are drawn per micro-batch from (seed, epoch, position)), and a
distributed run plans each epoch once, in rank 0, into `run_dir/plans/` for all ranks to map.
Sharded input (Lhotse Shar, see shards.py) goes through the same planner.
"""
from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence as SequenceABC
from typing import Any, Iterable, Iterator, Mapping, Sequence

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
CHUNK = 1 << 22  # rows per vectorised step (weights, packing): bounds transient memory
PARSE_CHUNK = 1 << 20  # rows per parsed piece of a TSV (a row of Python strings costs ~250 bytes there)
COLUMNS_SUFFIX = ".columns"  # the memory-mapped copy of M.tsv lives in M.tsv.columns/
PATH_BLOCK = 64  # paths per entry of the path index (one positioned read of a block finds a path)


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


def _header(path: Path) -> tuple[str, int, int, str]:
    """(resolved path, frames, sample rate, "ok" or why not) from one file's header."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError or OSError by cause
        return str(path), 0, 0, f"unreadable: {exc}".replace("\t", " ").replace("\n", " ")
    return str(path.resolve()), int(info.frames), int(info.samplerate), "ok"


def build_manifest(
    sources: Sequence["str | Path"], domain: str, min_seconds: float = 0.0, jobs: int = 8,
    progress: bool = False, partial: "str | Path | None" = None,
) -> tuple[list[ManifestEntry], Counter]:
    """Read every file's header with soundfile, `jobs` at a time (threads: header reads wait on
    the filesystem, not the CPU); unreadable and too-short files are counted, not kept.

    With `partial`, every header read is appended to that file as it arrives, and a later call
    with the same file reads only what is missing (an interrupted scan of millions of files
    resumes where it stopped)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {list(DOMAINS)}")
    files = find_audio(sources)
    done: dict[str, tuple[str, int, int, str]] = {}
    if partial is not None and Path(partial).is_file():
        for line in Path(partial).read_text().splitlines():
            fields = line.split("\t")
            if len(fields) == 5:  # a line cut short by a kill is read again
                done[fields[0]] = (fields[1], int(fields[2]), int(fields[3]), fields[4])
    todo = [p for p in files if str(p) not in done]
    log_file = open(partial, "a") if partial is not None else None
    try:
        with ThreadPoolExecutor(max(1, jobs)) as pool, tqdm(
            total=len(files), initial=len(files) - len(todo), desc="reading headers", unit="file", disable=not progress
        ) as bar:
            for c0 in range(0, len(todo), 4096):  # bounded batches: no future per file for millions of files
                chunk = todo[c0 : c0 + 4096]
                for path, result in zip(chunk, pool.map(_header, chunk)):
                    done[str(path)] = result
                    if log_file is not None:
                        log_file.write(f"{path}\t{result[0]}\t{result[1]}\t{result[2]}\t{result[3]}\n")
                if log_file is not None:
                    log_file.flush()
                bar.update(len(chunk))
    finally:
        if log_file is not None:
            log_file.close()
    entries, skipped = [], Counter()
    for path in files:
        resolved, frames, sr, status = done[str(path)]
        if status != "ok":
            skipped["unreadable"] += 1
            log.warning("skipping %s: %s", path, status)
        elif frames <= 0 or frames < min_seconds * sr:
            skipped["too_short"] += 1
        else:
            entries.append(ManifestEntry(resolved, frames, sr, domain))
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


class Paths:
    """A manifest's paths: one newline-separated UTF-8 text and the byte offset of every
    PATH_BLOCK-th path. A saved text is a file read with one positioned read of a block (~64
    paths) per lookup, never mapped: the ~3 GB of paths of 54M clips stay on disk and in the
    evictable page cache, and what a node holds resident is the index (16 bytes per 64 paths)."""

    TEXT, INDEX = "paths.txt", "path_index.npy"

    def __init__(self, index: np.ndarray, count: int, text: "bytes | None" = None, file: "Path | None" = None) -> None:
        self.index, self.count, self.text, self.file = index, count, text, file
        self._fd: "tuple[int, int] | None" = None  # (pid, fd): a forked or spawned worker opens its own

    @classmethod
    def from_strings(cls, paths: Sequence[str]) -> "Paths":
        out = cls.from_text(("\n".join(paths) + "\n").encode() if len(paths) else b"")
        if out.count != len(paths):
            bad = next(p for p in paths if "\n" in p)
            raise ValueError(f"a manifest path must not contain a line break, got {bad!r}")
        return out

    @classmethod
    def concat(cls, parts: Sequence["Paths"]) -> "Paths":
        return cls.from_text(b"".join(p.read_all() for p in parts))

    @classmethod
    def from_text(cls, text: bytes) -> "Paths":
        return cls(*text_index([np.frombuffer(text, dtype=np.uint8)]), text=text)

    def read_all(self) -> bytes:
        return self.text if self.text is not None else Path(self.file).read_bytes()  # type: ignore[arg-type]

    def _handle(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.file, os.O_RDONLY))  # type: ignore[arg-type]
        return self._fd[1]

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < self.count:
            raise IndexError(f"path {i} of a manifest of {self.count}")
        b, k = divmod(i, PATH_BLOCK)
        lo, hi = int(self.index[b]), int(self.index[b + 1])
        block = self.text[lo:hi] if self.text is not None else os.pread(self._handle(), hi - lo, lo)
        return block.split(b"\n", k + 1)[k].decode()

    @classmethod
    def load(cls, directory: Path, count: int) -> "Paths":
        return cls(np.load(directory / cls.INDEX, mmap_mode="r"), count, file=directory / cls.TEXT)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _fd=None)

    def __del__(self) -> None:
        if self._fd is not None and self._fd[0] == os.getpid():
            os.close(self._fd[1])


def text_index(pieces: Iterable[np.ndarray]) -> tuple[np.ndarray, int]:
    """(index, count) of a newline-terminated text given as consecutive pieces (uint8 arrays):
    index holds the start of paths 0, PATH_BLOCK, 2 * PATH_BLOCK, ... and the text's length."""
    starts, count, next_start, offset = [], 0, 0, 0
    for piece in pieces:
        ends = np.flatnonzero(piece == 10) + offset
        offset += piece.shape[0]
        if not ends.shape[0]:
            continue
        row_starts = np.concatenate([[next_start], ends[:-1] + 1])
        starts.append(row_starts[(count + np.arange(ends.shape[0])) % PATH_BLOCK == 0])
        count += ends.shape[0]
        next_start = int(ends[-1]) + 1
    if next_start != offset:
        raise ValueError("a path text must end with a line break")
    return np.concatenate(starts + [np.asarray([offset])]).astype(np.int64), count


def _file_pieces(path: Path, size: int = 1 << 26) -> Iterator[np.ndarray]:
    """A file in pieces read one after another (read, not mapped: its pages stay evictable cache)."""
    with open(path, "rb") as handle:
        while piece := handle.read(size):
            yield np.frombuffer(piece, dtype=np.uint8)


class Manifest:
    """Columnar manifest: numpy arrays instead of one Python object per file. `Manifest.load`
    memory-maps a saved copy, so every process on a node shares one copy in the page cache.
    `manifest[i]` is a ManifestEntry; iteration yields all of them; `read` decodes audio."""

    ARRAYS = ("num_samples", "sample_rate", "domain")

    def __init__(self, paths: "Sequence[str] | Paths", num_samples: Sequence[int], sample_rate: Sequence[int], domain: Sequence[int]) -> None:
        self.paths = paths if isinstance(paths, Paths) else Paths.from_strings(paths)
        self.num_samples = np.asarray(num_samples, dtype=np.int64)
        self.sample_rate = np.asarray(sample_rate, dtype=np.int32)
        self.domain = np.asarray(domain, dtype=np.int8)  # index into DOMAINS

    @classmethod
    def from_entries(cls, entries: Sequence[ManifestEntry]) -> "Manifest":
        return cls([e.path for e in entries], [e.num_samples for e in entries], [e.sample_rate for e in entries],
                   [DOMAINS.index(e.domain) for e in entries])

    @classmethod
    def concat(cls, parts: Sequence["Manifest"]) -> "Manifest":
        """One in-memory manifest from several (for large ones, `read_manifest([a, b])` maps one saved copy)."""
        if len(parts) == 1:
            return parts[0]  # keeps a memory-mapped manifest mapped
        if not parts:
            return cls([], [], [], [])
        return cls(Paths.concat([m.paths for m in parts]),
                   *(np.concatenate([getattr(m, name) for m in parts]) for name in cls.ARRAYS))

    @classmethod
    def load(cls, directory: "str | Path") -> "Manifest":
        """Memory-map a saved manifest (nothing is read until it is used)."""
        out = cls.__new__(cls)
        for name in cls.ARRAYS:
            setattr(out, name, np.load(Path(directory) / f"{name}.npy", mmap_mode="r"))
        out.paths = Paths.load(Path(directory), len(out))
        return out

    def __len__(self) -> int:
        return int(self.num_samples.shape[0])

    def path(self, i: int) -> str:
        return self.paths[i]

    def __getitem__(self, i: int) -> ManifestEntry:
        return ManifestEntry(self.path(i), int(self.num_samples[i]), int(self.sample_rate[i]), DOMAINS[self.domain[i]])

    def __iter__(self) -> Iterator[ManifestEntry]:
        return (self[i] for i in range(len(self)))

    @property
    def seconds(self) -> float:
        return float(sum((self.num_samples[c : c + CHUNK] / self.sample_rate[c : c + CHUNK]).sum() for c in range(0, len(self), CHUNK)))

    def read(self, i: int, start: int, frames: int) -> tuple[np.ndarray, int]:
        """Samples [frames, channels] (float32) of file i from `start`, and its sample rate."""
        import soundfile as sf

        return sf.read(self.path(i), start=start, frames=frames, dtype="float32", always_2d=True)


def _save_columns(directory: "str | Path", parts: "Iterable[tuple[bytes, Mapping[str, np.ndarray]]]", stamp: Mapping[str, Any]) -> None:
    """Write a saved manifest from parts as they come (a parser's chunks): each part's paths
    appended to the text file at once, the columns kept (7-13 bytes a row) and filled into
    their .npy files at the end; the directory appears complete or not at all."""
    directory = Path(directory)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    columns = []
    with open(tmp / Paths.TEXT, "wb") as handle:
        for text, part in parts:
            handle.write(text)
            columns.append(part)
    index, count = text_index(_file_pieces(tmp / Paths.TEXT))
    np.save(tmp / Paths.INDEX, index)
    total = sum(int(part["num_samples"].shape[0]) for part in columns)
    if count != total:
        raise ValueError(f"{count} paths for {total} rows")
    for name in Manifest.ARRAYS:
        largest = max((int(part[name].max()) for part in columns if part[name].shape[0]), default=0)
        dtype = {"num_samples": np.uint32 if largest < 2**32 else np.int64,  # the narrowest that holds every value:
                 "sample_rate": np.uint16 if largest < 2**16 else np.int32,  # 7 bytes a clip at 16 kHz
                 "domain": np.int8}[name]
        out = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=(total,))
        row = 0
        for part in columns:
            out[row : row + part[name].shape[0]] = part[name]
            row += part[name].shape[0]
        out.flush()
        del out
    (tmp / "stamp.json").write_text(json.dumps(dict(stamp)))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def _parse_chunks(path: Path) -> Iterator[tuple[bytes, dict[str, np.ndarray]]]:
    """A manifest TSV in validated chunks of PARSE_CHUNK rows (pandas' C parser): each chunk's
    paths as newline-terminated text and its columns; errors name the line."""
    import pandas as pd

    with open(path, newline="") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    if tuple(header) != COLUMNS:
        raise ValueError(f"{path}: header must be {'<TAB>'.join(COLUMNS)}, got {header}")
    first_row = 2  # file line of the chunk's first row
    try:
        reader = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, engine="c", chunksize=PARSE_CHUNK)
        for df in reader:
            if tuple(df.columns) != COLUMNS:
                raise ValueError(f"{path}: header must be {'<TAB>'.join(COLUMNS)}, got {list(df.columns)}")
            numbers = {c: pd.to_numeric(df[c], errors="coerce") for c in ("num_samples", "sample_rate")}
            for c, values in numbers.items():
                bad = values.isna() | (values <= 0) | (values != values.round())
                if bad.any():
                    row = int(np.argmax(bad.to_numpy()))
                    raise ValueError(f"{path}:{first_row + row}: {c} must be an integer > 0, got {df[c].iloc[row]!r}")
            domain = df["domain"].map({d: i for i, d in enumerate(DOMAINS)})
            if domain.isna().any():
                row = int(np.argmax(domain.isna().to_numpy()))
                raise ValueError(f"{path}:{first_row + row}: domain must be one of {list(DOMAINS)}, got {df['domain'].iloc[row]!r}")
            if not len(df):
                continue  # a header without rows
            yield ("\n".join(df["path"].tolist()) + "\n").encode(), {
                "num_samples": numbers["num_samples"].to_numpy(np.int64), "sample_rate": numbers["sample_rate"].to_numpy(np.int32),
                "domain": domain.to_numpy(np.int8)}
            first_row += len(df)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a tab-separated manifest ({exc})") from None


def columns_dir(manifests: "str | Path | Sequence[str | Path]") -> Path:
    """Where the saved copy of a manifest lives: M.tsv.columns/ beside it; the copy of several
    manifests read together lives beside the first, named after all of them."""
    files = _manifest_files(manifests)
    if len(files) == 1:
        return Path(f"{files[0]}{COLUMNS_SUFFIX}")
    tag = hashlib.sha1("\n".join(str(f.resolve()) for f in files).encode()).hexdigest()[:12]
    return Path(f"{files[0]}.with-{len(files) - 1}-more-{tag}{COLUMNS_SUFFIX}")


def _manifest_files(manifests: "str | Path | Sequence[str | Path]") -> list[Path]:
    return [Path(manifests)] if isinstance(manifests, (str, os.PathLike)) else [Path(m) for m in manifests]


def read_manifest(manifests: "str | Path | Sequence[str | Path]") -> Manifest:
    """One manifest TSV, or several read as one, as a memory-mapped columnar Manifest.

    The first reader parses the TSVs and saves their columns (`columns_dir`; rebuilt when a
    TSV's size or mtime change; a file lock keeps the ranks of a node from parsing at once);
    everyone else maps those files, so a node holds one copy however many ranks read it, and
    a restart takes milliseconds. Where the directory is read-only, the TSVs are parsed into
    this process's memory instead."""
    files = _manifest_files(manifests)
    if not files:
        return Manifest([], [], [], [])
    for path in files:
        if not path.is_file():
            raise ValueError(f"manifest not found: {path}; create one with `usad manifest build DIR --domain speech -o {path}`")
    stamp = {"manifests": [[str(p), st.st_size, st.st_mtime_ns] for p, st in ((p, p.stat()) for p in files)]}
    columns = columns_dir(files)

    def cached() -> "Manifest | None":
        try:
            return Manifest.load(columns) if json.loads((columns / "stamp.json").read_text()) == stamp else None
        except (OSError, ValueError):
            return None

    manifest = cached()
    if manifest is not None:
        return manifest
    try:
        lock = open(f"{columns}.lock", "a")
    except OSError as exc:
        log.warning("cannot write the columnar copy of %s (%s): parsing it in this process", files[0], exc)
        chunks = [chunk for path in files for chunk in _parse_chunks(path)]
        if not chunks:
            return Manifest([], [], [], [])
        return Manifest(Paths.from_text(b"".join(text for text, _ in chunks)),
                        *(np.concatenate([part[name] for _, part in chunks]) for name in Manifest.ARRAYS))
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first rank parses; the others wait, then map its copy
        manifest = cached()
        if manifest is None:
            _save_columns(columns, (chunk for path in files for chunk in _parse_chunks(path)), stamp)
            manifest = cached()
            assert manifest is not None
    return manifest


# ----------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    """The `data:` section of a distillation config."""

    manifests: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)  # Lhotse Shar directories from `usad shards build` (instead of manifests)
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
        if isinstance(cfg.shards, str):
            cfg.shards = [cfg.shards]
        if cfg.manifests and cfg.shards:
            raise ValueError("data: give data.manifests (TSV) or data.shards (Shar directories), not both")
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
    speech = other = 0.0
    for c in range(0, len(m), CHUNK):
        seconds = m.num_samples[c : c + CHUNK] / m.sample_rate[c : c + CHUNK]
        crops = np.where(seconds >= config.min_seconds, np.minimum(seconds, config.max_seconds), 0.0)
        is_speech = m.domain[c : c + CHUNK] == DOMAINS.index("speech")
        speech += float(crops[is_speech].sum())
        other += float(crops[~is_speech].sum())
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
    """An epoch's micro-batches: micro-batch j is units[lo[j]:hi[j]], a contiguous, length-sorted
    run of crop units. It stores one integer per crop; the crops (random starts included) are
    made when a batch is asked for, from (seed, epoch, lo[j]) alone, so any process that holds
    the same arrays (or maps the same saved plan) makes the same crops."""

    planner: "BatchPlanner"
    epoch: int
    units: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    def batch(self, j: int) -> list[Crop]:
        lo, hi = int(self.lo[j]), int(self.hi[j])
        rng = np.random.default_rng([self.planner.seed, self.epoch, 2, lo])
        index, start, frames, samples = self.planner.crops(np.asarray(self.units[lo:hi], dtype=np.int64), rng)
        return [Crop(int(i), int(s), int(f), int(n)) for i, s, f, n in zip(index, start, frames, samples)]

    def batches(self) -> list[list[Crop]]:
        return [self.batch(j) for j in range(len(self))]

    def save(self, directory: Path, key: Mapping[str, Any]) -> None:
        """units/lo/hi as .npy files plus key.json in `directory`, which appears complete or not
        at all (a process killed while saving or deleting a plan leaves no half plan behind)."""
        tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("units", "lo", "hi"):
            np.save(tmp / f"{name}.npy", getattr(self, name))
        (tmp / "key.json").write_text(json.dumps(dict(key)))
        remove_dir(directory)
        os.replace(tmp, directory)

    @classmethod
    def load(cls, planner: "BatchPlanner", epoch: int, directory: Path) -> "Plan":
        arrays = [np.load(directory / f"{name}.npy", mmap_mode="r") for name in ("units", "lo", "hi")]
        return cls(planner, epoch, *arrays)


def remove_dir(directory: Path) -> None:
    """Rename away, then delete: the directory vanishes at once, never half-deleted."""
    if directory.exists():
        trash = directory.with_name(f".trash-{directory.name}-{os.getpid()}")
        os.replace(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)


def pack(samples: np.ndarray, cap: int, pool: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Length bucketing: within consecutive pools of `pool` crops, sort longest first and cut
    micro-batches whose padded size (count x longest) stays within `cap` samples.

    Returns (order, lo, hi): micro-batch j holds crops order[lo[j]:hi[j]], pool by pool. All
    pools are cut at once, one numpy step per micro-batch of a pool (at most about
    data.bucket_pool steps), not one Python step per micro-batch of the epoch."""
    n = samples.shape[0]
    rows = -(-n // pool)
    padded = np.full(rows * pool, -1, dtype=np.int64)  # padding sorts after every real crop
    padded[:n] = samples
    within = np.argsort(-padded.reshape(rows, pool), axis=1, kind="stable")  # many small sorts, not one big one
    order = (within + (np.arange(rows) * pool)[:, None]).reshape(-1)
    order = order[order < n]
    s = samples[order]
    ends = np.minimum(np.arange(0, n, pool) + pool, n)
    cursor = np.arange(0, n, pool)
    active = np.arange(cursor.shape[0])
    los, his = [], []
    while active.shape[0]:
        p = cursor[active]
        q = np.minimum(ends[active], p + np.maximum(1, cap // s[p]))  # s[p]: the longest crop left in its pool
        los.append(p), his.append(q)
        cursor[active] = q
        active = active[q < ends[active]]
    lo = np.concatenate(los) if los else np.zeros(0, dtype=np.int64)
    hi = np.concatenate(his) if his else np.zeros(0, dtype=np.int64)
    by_position = np.argsort(lo, kind="stable")  # pool by pool, in cutting order
    return order, lo[by_position], hi[by_position]


class BatchPlanner:
    """Deterministic epoch plans from (seed, epoch): which crops, and how they form micro-batches.

    In `random` crop mode a unit is a manifest row (rows too short to use weigh 0), so no
    per-unit array is built; `segments` mode keeps arrays of the fixed pieces."""

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
        too_short = sum(int(self._too_short(c, min(len(m), c + CHUNK)).sum()) for c in range(0, len(m), CHUNK))
        self.skipped = Counter({"too_short": too_short})
        self.unit_index: "np.ndarray | None" = None
        if config.crop == "segments":  # a unit is one of the consecutive max_seconds pieces of a file
            files = np.nonzero(m.num_samples >= config.min_seconds * m.sample_rate)[0]
            seg = (config.max_seconds * m.sample_rate[files]).astype(np.int64)
            reps = -(-m.num_samples[files].astype(np.int64) // seg)  # signed: a saved copy's column may be unsigned
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
        self.by_domain = np.asarray([weights.get(d, 1.0) for d in DOMAINS])
        if too_short:
            log.warning("%d manifest files are shorter than %.2f s and are skipped", too_short, config.min_seconds)

    def _too_short(self, lo: int, hi: int) -> np.ndarray:
        m = self.entries
        return m.num_samples[lo:hi] < self.config.min_seconds * m.sample_rate[lo:hi]

    @property
    def num_units(self) -> int:
        return len(self.entries) if self.unit_index is None else int(self.unit_index.shape[0])

    def unit_weights(self, lo: int, hi: int) -> np.ndarray:
        """Domain weights of units lo..hi (0 for files too short to use)."""
        if self.unit_index is None:
            return self.by_domain[self.entries.domain[lo:hi]] * ~self._too_short(lo, hi)
        return self.by_domain[self.entries.domain[self.unit_index[lo:hi]]]

    def crops(self, units: np.ndarray, rng: "np.random.Generator | None") -> tuple[np.ndarray, ...]:
        """(index, start, frames, samples) of crops of `units`: a random max_seconds window of each
        file in `random` mode (at the start without an rng: the lengths alone), the unit itself in
        `segments` mode."""
        m = self.entries
        if self.unit_index is None:
            index, start, frames = units, np.zeros_like(units), m.num_samples[units].astype(np.int64)
        else:
            index, start, frames = self.unit_index[units], self.unit_start[units], self.unit_frames[units]
        sr = m.sample_rate[index].astype(np.int64)
        if self.config.crop == "random":
            longest = (self.config.max_seconds * sr).astype(np.int64)
            if rng is not None:
                start = start + (rng.random(units.shape[0]) * (np.maximum(frames - longest, 0) + 1)).astype(np.int64)
            frames = np.minimum(frames, longest)
        samples = -(-frames * SAMPLE_RATE // sr)  # ceil: the length after resampling to 16 kHz
        return index, start, frames, samples

    def epoch(self, epoch: int) -> Plan:
        """All micro-batches of one epoch, in training order (vectorised in chunks of CHUNK rows)."""
        rng = np.random.default_rng([self.seed, epoch])
        n = self.num_units
        repeats = np.empty(n, dtype=np.uint16)
        for c in range(0, n, CHUNK):
            w = self.unit_weights(c, min(n, c + CHUNK))
            repeats[c : c + CHUNK] = np.floor(w) + (rng.random(w.shape[0]) < (w - np.floor(w)))
        index_type = np.int32 if n < 2**31 else np.int64
        units = np.repeat(np.arange(n, dtype=index_type), repeats)
        del repeats
        rng.shuffle(units)  # in place: what rng.permutation draws, without a second copy of the epoch
        longest = int(self.config.max_seconds * SAMPLE_RATE)
        pool = self.config.bucket_pool * max(1, self.micro_samples // longest)
        step = pool * max(1, CHUNK // pool)  # whole pools per chunk
        los, his = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for c in range(0, units.shape[0], step):
            part = units[c : c + step]
            order, lo, hi = pack(self.crops(part.astype(np.int64), None)[3], self.micro_samples, pool)
            units[c : c + step] = part[order]
            los.append(lo + c), his.append(hi + c)
        bound = np.int32 if units.shape[0] < 2**31 else np.int64  # positions in units
        lo, hi = np.concatenate(los).astype(bound), np.concatenate(his).astype(bound)
        shuffle = rng.permutation(lo.shape[0])
        return Plan(self, epoch, units, lo[shuffle], hi[shuffle])

    def plan_of(self, units: np.ndarray) -> Plan:
        """`units` packed as one pool, unshuffled (the target cache's pass over fixed segments)."""
        order, lo, hi = pack(self.crops(units, None)[3], self.micro_samples, max(1, units.shape[0]))
        return Plan(self, 0, units[order], lo, hi)

    def refill(self, epoch: int, position: int) -> Iterator[Crop]:
        """Replacement crops for an emptied micro-batch, random but fixed by (seed, epoch, position)."""
        rng = np.random.default_rng([self.seed, epoch, position, 1])
        while True:
            unit = rng.integers(self.num_units, size=1)
            if self.unit_index is None and self._too_short(int(unit[0]), int(unit[0]) + 1)[0]:
                continue
            index, start, frames, samples = self.crops(unit, rng)
            yield Crop(int(index[0]), int(start[0]), int(frames[0]), int(samples[0]))


# ----------------------------------------------------------------------------- loading
class SkippedFile(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def load_crop(source: Manifest, crop: Crop, silence_threshold: float, min_samples: int) -> torch.Tensor:
    """16 kHz mono float32 [N] for one crop of `source` (a manifest or shards), or
    SkippedFile(kind) when it must not be trained on."""
    entry = source[crop.index]
    try:
        data, sr = source.read(crop.index, crop.start, crop.frames)
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
    `crops`, `domains` (each crop's index into DOMAINS, from the manifest's domain column: the
    domain-aware loss weights), `skipped` (Counter of this batch's skips) and, with a target cache, `targets`.
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
        wav = load_crop(self.planner.entries, crop, self.planner.config.silence_threshold, self.min_samples)
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
            return {"wavs": None, "lens": None, "crops": [], "domains": None, "skipped": skipped}
        refill = self.planner.refill(epoch, position)
        for _ in range(MAX_REFILL_TRIES):
            if kept:
                break
            take(next(refill))
        if not kept:
            raise ValueError(f"{MAX_REFILL_TRIES} random clips in a row could not be used ({dict(skipped)}): check the manifests")
        wav, lens = pad_batch(wavs)
        domains = torch.tensor([int(self.planner.entries.domain[c.index]) for c in kept], dtype=torch.long)
        out = {"wavs": wav, "lens": lens, "crops": kept, "domains": domains, "skipped": skipped}
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
        plan_dir: "str | Path | None" = None,
    ) -> None:
        self.group = world_size * grad_accum
        self.planner = BatchPlanner(entries, config, batch_seconds / self.group, seed)
        self.world_size, self.rank, self.grad_accum = world_size, rank, grad_accum
        self.cache = cache
        self.plan_dir = Path(plan_dir) if plan_dir is not None else None
        self.epoch, self.step = 0, 0
        self._plan: "tuple[int, Plan] | None" = None

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self._epoch_plan(epoch)) // self.group

    def _epoch_plan(self, epoch: int) -> Plan:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self._shared_plan(epoch) if self.plan_dir is not None else self.planner.epoch(epoch))
        return self._plan[1]

    def _shared_plan(self, epoch: int) -> Plan:
        """Rank 0 plans the epoch into plan_dir; every rank (after a barrier) maps that one copy.
        A saved plan is reused only if it was made for this data and these settings."""
        import torch.distributed as dist

        assert self.plan_dir is not None
        directory = self.plan_dir / f"epoch_{epoch:06d}"
        m = self.planner.entries
        key = {"seed": self.planner.seed, "micro_samples": self.planner.micro_samples, "units": self.planner.num_units,
               "config": dataclasses.asdict(self.planner.config) | {"num_workers": None},
               "seconds": round(m.seconds, 3), "weights": self.planner.domain_weights}
        if self.rank == 0:
            try:
                fresh = json.loads((directory / "key.json").read_text()) != json.loads(json.dumps(key))
            except (OSError, ValueError):
                fresh = True
            if fresh:
                self.planner.epoch(epoch).save(directory, key)
        if dist.is_initialized():
            dist.barrier()
        plan = Plan.load(self.planner, epoch, directory)
        if self.rank == 0:
            # Earlier epochs are done with only once every rank has passed this epoch's barrier, i.e.
            # has mapped the previous plan: a run resumed at an epoch's last step reaches the next
            # epoch in rank 0 while a slower rank is still mapping the previous one.
            for old in self.plan_dir.glob("epoch_*"):
                if old.name < directory.name:
                    remove_dir(old)
        return plan

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
