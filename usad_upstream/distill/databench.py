"""`usad bench --data`: can the loader feed the GPU, and what does a huge manifest cost to start?

Loader throughput: seconds of audio per second that ONE loading process (a DataLoader worker)
turns into micro-batches, from TSV manifests (one file per clip) and from Lhotse Shar shards,
with a cold page cache (the corpus's pages dropped with posix_fadvise before the pass) and a
warm one (the same pass again). Beside it, the training step's demand in audio s/s, so
workers per GPU = demand / per-worker throughput.

Manifest scale: synthetic TSV manifests of N rows (nothing is read from them but the TSV), in
fresh processes: the first read (parse + the columnar copy), a rank's start from the mapped
copy (manifest + planner + the epoch plan rank 0 saved), and each one's memory.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

def _memory() -> dict[str, float]:
    """This process's resident memory in MB: anonymous (its own), file-backed (mapped files,
    shared with other processes mapping them) and PSS (shared pages split among their users)."""
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key = line.split(":")[0]
            if key in ("RssAnon", "RssFile", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024
    with open("/proc/self/smaps_rollup") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) / 1024
    return out


class AnonPeak:
    """The highest RssAnon (MB) this process reached while the block ran, sampled every 5 ms:
    the kernel's VmHWM counts mapped file pages too, which the ranks of a node share."""

    def __enter__(self) -> "AnonPeak":
        import threading

        self.peak, self._stop = _memory()["RssAnon"], threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, _memory()["RssAnon"])

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _memory()["RssAnon"])


def _drop_cache(paths: Sequence[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def synthetic_corpus(root: Path, clips: int, seconds: float, sample_rate: int) -> tuple[Path, Path]:
    """`clips` FLAC files of tone + noise, their manifest, and the same clips as Shar shards."""
    import soundfile as sf

    from .data import ManifestEntry, write_manifest
    from .shards import build_shards

    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    for i in range(clips):
        path = audio / f"clip{i:06d}.flac"
        if not path.is_file():
            x = 0.3 * np.sin(2 * np.pi * (100 + 7 * i) * t) + 0.05 * rng.standard_normal(n)
            sf.write(path, x.astype(np.float32), sample_rate)
        entries.append(ManifestEntry(str(path), n, sample_rate, ("speech", "sound", "music")[i % 3]))
    manifest = write_manifest(entries, root / "manifest.tsv")
    shards = root / "shards"
    build_shards([manifest], shards, shard_size=max(1, clips // 8), jobs=1, progress=False)
    return manifest, shards


def loader_pass(source: Any, files: Sequence[Path], batches: int, cold: bool) -> dict[str, float]:
    """Load `batches` planned micro-batches of 100 s in this process; audio s/s of the pass."""
    import torch

    from .data import DataConfig, DistillData, MicroBatches

    torch.set_num_threads(1)
    config = DataConfig.from_dict({"max_seconds": 10.0, "min_seconds": 1.0})
    data = DistillData(source, config, batch_seconds=100.0, seed=0)
    plan = data._epoch_plan(0)
    positions = [(0, j, plan.batch(j)) for j in range(min(batches, len(plan)))]
    dataset = MicroBatches(data.planner, positions)
    if cold:
        _drop_cache(files)
    start = time.perf_counter()
    seconds = sum(float(dataset[i]["lens"].sum()) / 16000 for i in range(len(dataset)))
    took = time.perf_counter() - start
    return {"batches": len(dataset), "audio_s": seconds, "seconds": took, "audio_s_per_s": seconds / took}


def _in_fresh(fn: Any, *args: Any) -> Any:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def loader_throughput(workdir: Path, clips: int, batches: int, sample_rate: int) -> list[dict[str, Any]]:
    from .data import read_manifest
    from .shards import ShardSet

    manifest, shards = synthetic_corpus(workdir / "corpus", clips, 10.0, sample_rate)
    rows = []
    for kind in ("tsv", "shards"):
        files = sorted((workdir / "corpus" / "audio").glob("*.flac")) if kind == "tsv" else sorted((shards / "shar").glob("*.tar"))
        for cold in (True, False):
            source = read_manifest(manifest) if kind == "tsv" else ShardSet([shards])
            rows.append({"source": kind, "cache": "cold" if cold else "warm", "source_rate": sample_rate,
                         **loader_pass(source, files, batches, cold)})
    return rows


def write_synthetic_tsv(path: Path, rows: int) -> None:
    """A manifest of `rows` made-up clips (2-30 s, 16 kHz; speech 60%, sound 30%, music 10%)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    with open(path, "w") as handle:
        handle.write("path\tnum_samples\tsample_rate\tdomain\n")
        for c in range(0, rows, 1 << 21):
            i = np.arange(c, min(rows, c + (1 << 21)))
            df = pd.DataFrame({
                "path": [f"/data/corpus/part{k // 100000:04d}/spk{k // 100:07d}/utt{k:010d}.flac" for k in i],
                "num_samples": rng.integers(2 * 16000, 30 * 16000, i.shape[0]),
                "sample_rate": 16000,
                "domain": np.asarray(["speech", "sound", "music"])[rng.choice(3, i.shape[0], p=[0.6, 0.3, 0.1])],
            })
            df.to_csv(handle, sep="\t", header=False, index=False)


def first_read(tsv: str) -> dict[str, float]:
    """Parse the TSV and write its columnar copy (what the first process ever to read it does)."""
    from .data import read_manifest

    before = _memory()
    start = time.perf_counter()
    manifest = read_manifest(tsv)
    took = time.perf_counter() - start
    return {"rows": len(manifest), "seconds": took, "peak_growth_mb": _memory()["VmHWM"] - before["VmHWM"]}


def rank_start(tsv: str, plan_dir: str, rank: int, world: int, hold: "Any | None" = None) -> dict[str, float]:
    """One rank's start on a mapped manifest: manifest, planner, epoch plan (rank 0 computes and
    saves it; others map it), first micro-batch's crops. Memory is the growth over the bare
    interpreter + numpy/torch imports, i.e. what the data costs."""
    import torch  # noqa: F401  (imported before measuring: every rank has it)

    from .data import PATH_BLOCK, DataConfig, DistillData, read_manifest

    before = _memory()
    start = time.perf_counter()
    with AnonPeak() as anon:
        config = DataConfig.from_dict({"max_seconds": 15.0, "min_seconds": 2.0})
        manifest = read_manifest(tsv)
        data = DistillData(manifest, config, batch_seconds=800.0, seed=0, world_size=world, rank=rank, plan_dir=plan_dir)
        steps = data.steps_in_epoch(0)
        data._rank_batches(0, 0)[0]
    took = time.perf_counter() - start
    at_start = _memory()
    # over an epoch a rank's micro-batches reach every page of the plan and of the manifest's
    # columns, and every block of paths: touch one value per page and read one path per block
    plan = data._epoch_plan(0)
    arrays = [plan.units, plan.lo, plan.hi, manifest.paths.index] + [getattr(manifest, n) for n in manifest.ARRAYS]
    touched = sum(int(np.asarray(a[:: max(1, 4096 // a.itemsize)]).astype(np.int64).sum() % 7) for a in arrays)
    paths_start = time.perf_counter()
    touched += sum(len(manifest.path(i)) for i in range(0, len(manifest), PATH_BLOCK)) % 7
    paths_took = time.perf_counter() - paths_start
    after = _memory()
    if hold is not None:  # stay alive until every rank measured, so shared pages are shared
        hold.wait()
    return {"rank": rank, "seconds": took, "steps": steps, "start_rss_anon_mb": at_start["RssAnon"] - before["RssAnon"],
            "start_rss_file_mb": at_start["RssFile"] - before["RssFile"],
            "rss_anon_mb": after["RssAnon"] - before["RssAnon"], "rss_file_mb": after["RssFile"] - before["RssFile"],
            "pss_mb": after["Pss"] - before["Pss"], "peak_growth_mb": after["VmHWM"] - before["VmHWM"],
            "start_peak_anon_mb": anon.peak - before["RssAnon"],
            "seconds_reading_every_path_block": paths_took, "touched": touched}


def manifest_scale(workdir: Path, rows: int, ranks: int) -> dict[str, Any]:
    import multiprocessing
    import shutil
    from concurrent.futures import ProcessPoolExecutor

    tsv = workdir / f"synthetic_{rows}.tsv"
    if not tsv.is_file():
        write_synthetic_tsv(tsv, rows)
    shutil.rmtree(f"{tsv}.columns", ignore_errors=True)
    plan_dir = workdir / f"plans_{rows}"
    shutil.rmtree(plan_dir, ignore_errors=True)
    first = _in_fresh(first_read, str(tsv))
    rank0 = _in_fresh(rank_start, str(tsv), str(plan_dir), 0, 8)  # plans the epoch, saves it
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        hold = manager.Barrier(ranks)
        with ProcessPoolExecutor(ranks, mp_context=ctx) as pool:
            others = [f.result() for f in [pool.submit(rank_start, str(tsv), str(plan_dir), r, 8, hold) for r in range(1, ranks + 1)]]
    return {"rows": rows, "tsv_mb": tsv.stat().st_size / 2**20, "first_read": first, "rank0_start": rank0, "rank_starts": others}


def run_data_bench(workdir: Path, clips: int, batches: int, sample_rate: int, demand: float,
                   manifest_rows: Sequence[int], ranks: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(), "demand_audio_s_per_s": demand,
                              "loader": loader_throughput(workdir, clips, batches, sample_rate) if clips else [],
                              "manifest_scale": [manifest_scale(workdir, rows, ranks) for rows in manifest_rows]}
    return record


def data_table(record: dict[str, Any]) -> str:
    lines = [f"Loader: one process (= one DataLoader worker), 1 thread, micro-batches of 100 s of 10 s crops; "
             f"training step demand {record['demand_audio_s_per_s']:.0f} audio s/s", "",
             "| source | page cache | source rate (Hz) | audio s / s per worker | workers for the demand |", "|---|---|---|---|---|"]
    for r in record["loader"]:
        need = record["demand_audio_s_per_s"] / r["audio_s_per_s"]
        lines.append(f"| {r['source']} | {r['cache']} | {r['source_rate']} | {r['audio_s_per_s']:.0f} | {need:.1f} |")
    if record["manifest_scale"]:
        lines += ["", "Memory: growth over the bare process (torch imported), after touching every page an epoch "
                  "touches (plan, all columns, one path of every block of paths: paths are read with positioned reads, not mapped); "
                  "anon = the rank's own, file = mapped pages, shared by the ranks of a node", "",
                  "| manifest rows | TSV (MB) | first read: s / peak RSS growth MB | rank 0 start (plans): s / anon MB (peak while planning) / file MB | "
                  "rank k start (maps): s / anon MB / file MB / PSS MB | a node of 8 ranks, MB (at most) |", "|---|---|---|---|---|---|"]
        for m in record["manifest_scale"]:
            f, z = m["first_read"], m["rank0_start"]
            ks = m["rank_starts"]
            mean = {k: float(np.mean([r[k] for r in ks])) for k in ("seconds", "rss_anon_mb", "rss_file_mb", "pss_mb")}
            lines.append(f"| {m['rows']:,} | {m['tsv_mb']:.0f} | {f['seconds']:.1f} / {f['peak_growth_mb']:.0f} | "
                         f"{z['seconds']:.1f} / {z['rss_anon_mb']:.0f} (peak {z['start_peak_anon_mb']:.0f}) / {z['rss_file_mb']:.0f} | "
                         f"{mean['seconds']:.1f} / {mean['rss_anon_mb']:.0f} / {mean['rss_file_mb']:.0f} / {mean['pss_mb']:.0f} "
                         f"(mean of {len(ks)} ranks alive together) | {node_mb(m):.0f} |")
    return "\n".join(lines) + "\n"


def node_mb(scale: dict[str, Any]) -> float:
    """What a node of 8 ranks holds for the data at most: rank 0's own peak while it plans,
    7 times the largest own memory of a mapping rank, and the mapped pages once (all ranks map
    the same files)."""
    ks = scale["rank_starts"]
    return (scale["rank0_start"]["start_peak_anon_mb"] + 7 * max(max(r["rss_anon_mb"], r["start_peak_anon_mb"]) for r in ks)
            + max(r["rss_file_mb"] for r in [scale["rank0_start"], *ks]))


def write_data_record(record: dict[str, Any], out_dir: "str | os.PathLike[str]") -> Path:
    from ..checkpoint import atomic_write

    path = Path(out_dir) / f"data-{record['date']}.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    return path
