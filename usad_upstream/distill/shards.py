"""Sharded distillation data in Lhotse Shar: `usad shards build` and the reader the trainer uses.

Why Lhotse Shar (and not WebDataset tars): Shar keeps each shard's metadata (a lhotse CutSet:
duration, custom fields such as the domain) in its own file beside the audio tar, so the
trainer knows every clip's length and domain without opening any audio. That is what exact
resume, length bucketing and weighted domain mixing need: the epoch plan is computed from the
metadata alone (the same planner as for TSV manifests), so a resumed run, on any number of
processes, recomputes the same plan instead of replaying a stream. WebDataset keeps metadata
inside the tars, so lengths and domains are known only after reading the shards, and its
pipelines (like lhotse 1.33's samplers) resume by replaying.

An output directory OUT holds a Lhotse Shar directory, written with lhotse's SharWriter and
read by `lhotse.CutSet.from_shar(in_dir=OUT/shar)`, and our index of it beside (lhotse 1.33
takes every file in a Shar directory for a field, so nothing else may live there):
  shar/cuts.000000.jsonl.gz       one MonoCut per clip; custom: domain, source (the original file)
  shar/recording.000000.tar       <cut id>.flac (16 kHz mono, 16-bit FLAC) + <cut id>.json, per cut
  index/recording.000000.tar.idx  little-endian uint64 offset of each cut's first tar header, then
                                  the file size: the index layout of lhotse's indexed Shar reader
                                  (its 2.0 branch); the trainer reads a clip with one positioned read
  index/parts/000000.npy          (num_samples, domain) per cut, gathered into index/columns/ at the end
  index/columns/                  num_samples, domain and shard bounds of every cut (memory-mapped)
  usad_shards.json                what was built (manifests, seed, shard size); a resumed build must match

Clips are shuffled (seeded) before they are cut into shards, so a shard is a random sample of
the whole pool; the planner's micro-batches read from anywhere, one clip per read.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..frontend import SAMPLE_RATE
from .data import DOMAINS, Manifest, ManifestEntry, read_manifest

log = logging.getLogger(__name__)

SPEC = "usad_shards.json"
FORMAT = "lhotse-shar"
OPEN_SHARDS = 64  # open tar files (and their indexes) kept per process


def _use_libsndfile() -> None:
    """lhotse reads and writes our FLAC through libsndfile (soundfile), the trainer's decoder;
    its default probing tries torchaudio first, which cannot load on CPU-only torch stacks."""
    from lhotse.audio.backend import set_current_audio_backend

    set_current_audio_backend("LibsndfileBackend")


def tar_index(tar_path: Path) -> np.ndarray:
    """Offsets of each (audio, metadata) member pair's first header, plus the file size."""
    with tarfile.open(tar_path, "r:") as tar:
        members = tar.getmembers()
    if len(members) % 2:
        raise ValueError(f"{tar_path}: {len(members)} members, expected (audio, json) pairs")
    return np.asarray([m.offset for m in members[::2]] + [tar_path.stat().st_size], dtype="<u8")


def _mono_16k(path: str) -> np.ndarray:
    import soundfile as sf
    import torch

    data, sr = sf.read(path, dtype="float32", always_2d=True)
    wav = torch.from_numpy(data.mean(axis=1))
    if sr != SAMPLE_RATE:
        from ..compat import import_torchaudio

        wav = import_torchaudio().functional.resample(wav, sr, SAMPLE_RATE)
    if not torch.isfinite(wav).all():
        raise ValueError("non-finite samples")
    return wav.numpy()


def _write_shard(out_dir: str, shard: int, rows: list[tuple[int, str, int]]) -> Counter:
    """Write shard `shard` from (row id, path, domain) rows; its .idx appears last (= done)."""
    import soundfile as sf
    from lhotse import Recording
    from lhotse.audio import AudioSource
    from lhotse.shar import SharWriter

    _use_libsndfile()
    out, name = Path(out_dir), f"{shard:06d}"
    shar, index_dir = out / "shar", out / "index"
    tmp = index_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    counts, meta = Counter(), []
    with SharWriter(str(tmp), fields={"recording": "flac"}, shard_size=None, shard_suffix=f".{name}") as writer:
        for row, path, domain in rows:
            try:
                wav = _mono_16k(path)
            except Exception as exc:  # unreadable, truncated, not audio: counted, like the trainer does
                counts["unreadable"] += 1
                log.warning("skipping unreadable %s: %s", path, exc)
                continue
            if wav.shape[0] == 0:
                counts["unreadable"] += 1
                continue
            flac = io.BytesIO()
            sf.write(flac, wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            cut_id = f"c{row:010d}"
            recording = Recording(id=cut_id, sources=[AudioSource(type="memory", channels=[0], source=flac.getvalue())],
                                  sampling_rate=SAMPLE_RATE, num_samples=wav.shape[0], duration=wav.shape[0] / SAMPLE_RATE)
            cut = recording.to_cut()
            cut.custom = {"domain": DOMAINS[domain], "source": path}
            writer.write(cut)
            meta.append((wav.shape[0], domain))
            counts["clips"] += 1
    np.save(tmp / "part.npy", np.asarray(meta, dtype=np.int64).reshape(-1, 2))
    tar = tmp / f"recording.{name}.tar"
    if meta:
        index = tar_index(tar)
        os.replace(tmp / f"cuts.{name}.jsonl.gz", shar / f"cuts.{name}.jsonl.gz")
        os.replace(tar, shar / tar.name)
    else:  # nothing readable: no cuts, no tar (lhotse sees one shard fewer), an empty index
        index = np.zeros(1, dtype="<u8")
    os.replace(tmp / "part.npy", index_dir / "parts" / f"{name}.npy")
    index.tofile(tmp / "idx")
    os.replace(tmp / "idx", index_dir / f"recording.{name}.tar.idx")
    shutil.rmtree(tmp)
    return counts


def _spec(manifests: Sequence[Path], entries: Manifest, shard_size: int, seed: int) -> dict[str, Any]:
    return {"format": FORMAT, "audio": "flac", "sample_rate": SAMPLE_RATE, "seed": seed, "shard_size": shard_size,
            "clips": len(entries), "manifests": [str(Path(m).resolve()) for m in manifests]}


def build_shards(
    manifests: Sequence["str | Path"], out_dir: "str | Path", shard_size: int = 1000, jobs: int = 1, seed: int = 0,
    progress: bool = True,
) -> Counter:
    """Convert manifests into a Shar directory, `jobs` shards at a time (processes: decoding,
    resampling and FLAC encoding use the CPU). Finished shards are kept: a rerun of the same
    command writes only the missing ones, then gathers the index."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait

    from tqdm import tqdm

    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    entries = read_manifest(manifests)
    if not len(entries):
        raise ValueError(f"{', '.join(map(str, manifests))}: no clips to shard")
    spec = _spec([Path(m) for m in manifests], entries, shard_size, seed)
    spec_path = out / SPEC
    if spec_path.is_file():
        old = json.loads(spec_path.read_text())
        if old != spec:
            differ = sorted(k for k in spec if old.get(k) != spec[k])
            raise ValueError(f"{out} holds shards built differently ({', '.join(differ)}): use another -o or the same settings")
    else:
        out.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec, indent=2))
    for d in (out / "shar", out / "index" / "parts"):
        d.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(entries))
    num_shards = -(-len(entries) // shard_size)
    todo = [k for k in range(num_shards) if not (out / "index" / f"recording.{k:06d}.tar.idx").is_file()]
    counts = Counter(shards=num_shards, shards_before=num_shards - len(todo))

    def rows(k: int) -> list[tuple[int, str, int]]:
        return [(int(i), entries.path(int(i)), int(entries.domain[i])) for i in order[k * shard_size : (k + 1) * shard_size]]

    bar = tqdm(total=num_shards, initial=num_shards - len(todo), desc=f"writing shards to {out}", unit="shard", disable=not progress)
    if jobs > 1:  # spawned, not forked: a fork of a process with threads (tqdm's, torch's) can deadlock
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            running: set = set()
            for k in todo:  # at most 2 x jobs shards' rows in flight, however many shards there are
                running.add(pool.submit(_write_shard, str(out), k, rows(k)))
                if len(running) >= 2 * jobs:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        counts.update(f.result())
                        bar.update(1)
            for f in as_completed(running):
                counts.update(f.result())
                bar.update(1)
    else:
        for k in todo:
            counts.update(_write_shard(str(out), k, rows(k)))
            bar.update(1)
    bar.close()
    parts = [np.load(out / "index" / "parts" / f"{k:06d}.npy") for k in range(num_shards)]
    index = out / "index" / "columns"
    tmp = out / "index" / "columns.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    np.save(tmp / "num_samples.npy", np.concatenate([p[:, 0] for p in parts]).astype(np.int64))
    np.save(tmp / "domain.npy", np.concatenate([p[:, 1] for p in parts]).astype(np.int8))
    np.save(tmp / "starts.npy", np.concatenate([[0], np.cumsum([p.shape[0] for p in parts])]).astype(np.int64))
    shutil.rmtree(index, ignore_errors=True)
    os.replace(tmp, index)
    counts["clips_total"] = int(sum(p.shape[0] for p in parts))
    return counts


class ShardSet(Manifest):
    """The clips of one or more Shar directories as a columnar table the planner can use
    (num_samples, sample_rate, domain); `read` fetches one clip with a positioned read.
    Each process keeps up to OPEN_SHARDS tar files open; nothing is read until asked."""

    def __init__(self, directories: Sequence["str | Path"]) -> None:  # not Manifest's: no paths to encode
        self.dirs = [Path(d) for d in directories]
        parts = []
        for d in self.dirs:
            index = d / "index" / "columns"
            if not (index / "starts.npy").is_file():
                why = "is not a shard directory" if not (d / SPEC).is_file() else "was not finished"
                raise ValueError(f"{d} {why}: build it with `usad shards build --manifest M.tsv -o {d}` (a rerun resumes)")
            parts.append({n: np.load(index / f"{n}.npy", mmap_mode="r") for n in ("num_samples", "domain", "starts")})
        self._parts = parts
        self._first = np.cumsum([0] + [p["num_samples"].shape[0] for p in parts])  # first clip of each directory
        self.num_samples = parts[0]["num_samples"] if len(parts) == 1 else np.concatenate([p["num_samples"] for p in parts])
        self.domain = parts[0]["domain"] if len(parts) == 1 else np.concatenate([p["domain"] for p in parts])
        self.sample_rate = np.broadcast_to(np.int32(SAMPLE_RATE), self.num_samples.shape)  # no memory
        self._open: "OrderedDict[tuple[int, int], tuple[int, np.ndarray]]" = OrderedDict()

    def _locate(self, i: int) -> tuple[int, int, int]:
        """(directory, shard, position in shard) of clip i."""
        d = int(np.searchsorted(self._first, i, side="right")) - 1
        local = i - int(self._first[d])
        starts = self._parts[d]["starts"]
        shard = int(np.searchsorted(starts, local, side="right")) - 1
        return d, shard, local - int(starts[shard])

    def path(self, i: int) -> str:
        d, shard, pos = self._locate(i)
        return f"{self.dirs[d]}/shar/recording.{shard:06d}.tar#{pos}"

    def __getitem__(self, i: int) -> ManifestEntry:
        return ManifestEntry(self.path(i), int(self.num_samples[i]), SAMPLE_RATE, DOMAINS[self.domain[i]])

    def _shard(self, d: int, shard: int) -> tuple[int, np.ndarray]:
        key = (d, shard)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        tar = f"recording.{shard:06d}.tar"
        offsets = np.fromfile(self.dirs[d] / "index" / f"{tar}.idx", dtype="<u8")
        tar = self.dirs[d] / "shar" / tar
        self._open[key] = (os.open(tar, os.O_RDONLY), offsets)
        if len(self._open) > OPEN_SHARDS:
            os.close(self._open.popitem(last=False)[1][0])
        return self._open[key]

    def read(self, i: int, start: int, frames: int) -> tuple[np.ndarray, int]:
        import soundfile as sf

        d, shard, pos = self._locate(i)
        fd, offsets = self._shard(d, shard)
        offset = int(offsets[pos])
        header = tarfile.TarInfo.frombuf(os.pread(fd, tarfile.BLOCKSIZE, offset), "utf-8", "surrogateescape")
        if not header.isreg() or not header.name.endswith(".flac"):
            raise ValueError(f"{self.path(i)}: tar member {header.name!r} is not a FLAC clip (index out of date?)")
        data = os.pread(fd, header.size, offset + tarfile.BLOCKSIZE)
        return sf.read(io.BytesIO(data), start=start, frames=frames, dtype="float32", always_2d=True)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own files
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state


def open_data(manifests: Sequence[str], shards: Sequence[str]) -> Manifest:
    """The clips a data config names: TSV manifests (memory-mapped columns) or Shar directories."""
    if shards:
        return ShardSet(shards)
    return read_manifest(manifests)
