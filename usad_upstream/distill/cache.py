"""Offline teacher-target cache: run the frozen teachers once, store their distilled layers.

Training then reads targets from disk instead of running the teachers every step. Targets are
stored as float16, one safetensors file per crop (`<dir>/<2 hex>/<sha1>.safetensors`, tensors
"<teacher>/<layer>" of shape [frames, dim]), so building is resumable (existing files are kept)
and parallel (ranks take every world_size-th crop). Crops must be fixed to be reusable, so the
cache requires `data.crop=segments` (each file cut into consecutive max_seconds pieces).
Size: frames x dim x 2 bytes per distilled layer, e.g. ~4.6 MB per 10 s of audio for WavLM Base+
(50 Hz) + ATST-Frame (25 Hz) with 4 layers each.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..checkpoint import atomic_write
from .config import TRAINER_FIELDS
from .data import BatchPlanner, Crop, DataConfig, Manifest, ManifestEntry, MicroBatches, RankBatches
from .objective import Targets, TeacherSpec

FORMAT = "usad-target-cache"
FORMAT_VERSION = 1


def teacher_identity(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a teacher spec that change its targets (loss weight and domain do not; the
    distilled layers are recorded on their own)."""
    return {k: v for k, v in spec.items() if k not in TRAINER_FIELDS}


class TargetCache:
    """A directory of per-crop float16 teacher targets plus meta.json describing what they are."""

    def __init__(self, root: "str | Path", meta: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self.meta = dict(meta)
        self.specs = {
            name: TeacherSpec(name, t["num_layers"], t["dim"], t["frame_rate"]) for name, t in meta["teachers"].items()
        }
        self.layers = {name: list(t["layers"]) for name, t in meta["teachers"].items()}

    @staticmethod
    def describe(
        teacher_specs: Mapping[str, Mapping[str, Any]],
        teachers: Mapping[str, TeacherSpec],
        layers: Mapping[str, Sequence[int]],
        data: DataConfig,
    ) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "teachers": {
                name: {
                    "spec": teacher_identity(teacher_specs[name]),
                    "num_layers": t.num_layers,
                    "dim": t.dim,
                    "frame_rate": t.frame_rate,
                    "layers": list(layers[name]),
                }
                for name, t in teachers.items()
            },
            "data": {"crop": data.crop, "max_seconds": data.max_seconds},
        }

    @classmethod
    def create(cls, root: "str | Path", meta: Mapping[str, Any]) -> "TargetCache":
        """Open `root` for writing; an existing cache must describe the same targets."""
        root = Path(root)
        meta_path = root / "meta.json"
        if meta_path.is_file():
            cache = cls.open(root)
            if cache.meta != json.loads(json.dumps(meta)):
                raise ValueError(f"{root} holds a target cache for other teachers or crops: {cache.meta} vs {dict(meta)}")
            return cache
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
        return cls(root, meta)

    @classmethod
    def open(cls, root: "str | Path") -> "TargetCache":
        meta_path = Path(root) / "meta.json"
        if not meta_path.is_file():
            raise ValueError(f"no target cache at {root} (missing meta.json); build it with `usad distill-cache --config ...`")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: not a version {FORMAT_VERSION} {FORMAT} file")
        return cls(root, meta)

    def check(self, teacher_specs: Mapping[str, Mapping[str, Any]], data: DataConfig, layers: Mapping[str, Sequence[int]]) -> None:
        """Refuse to train from targets of other teachers, layers or crops than the config asks for."""
        want = {name: teacher_identity(spec) for name, spec in teacher_specs.items()}
        have = {name: t["spec"] for name, t in self.meta["teachers"].items()}
        if want != have:
            raise ValueError(f"target cache {self.root} was built for teachers {have}, the config has {want}")
        if {"crop": data.crop, "max_seconds": data.max_seconds} != self.meta["data"]:
            raise ValueError(
                f"target cache {self.root} holds crops {self.meta['data']}; set data.crop=segments and "
                f"data.max_seconds={self.meta['data']['max_seconds']} to train from it"
            )
        for name, wanted in layers.items():
            if list(wanted) != self.layers[name]:
                raise ValueError(f"target cache {self.root}: teacher {name!r} layers {self.layers[name]}, the objective needs {list(wanted)}")

    @staticmethod
    def key(entry: ManifestEntry, crop: Crop) -> str:
        return hashlib.sha1(f"{entry.path}\t{crop.start}\t{crop.frames}".encode()).hexdigest()

    def file(self, entry: ManifestEntry, crop: Crop) -> Path:
        key = self.key(entry, crop)
        return self.root / key[:2] / f"{key}.safetensors"

    def read(self, entry: ManifestEntry, crop: Crop) -> "dict[str, dict[int, torch.Tensor]] | None":
        from safetensors.torch import load_file

        path = self.file(entry, crop)
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        return {name: {tl: tensors[f"{name}/{tl}"] for tl in layers} for name, layers in self.layers.items()}

    def write(self, entry: ManifestEntry, crop: Crop, targets: Mapping[str, Mapping[int, torch.Tensor]]) -> None:
        from safetensors.torch import save_file

        tensors = {f"{name}/{tl}": x.to("cpu", torch.float16).contiguous() for name, ls in targets.items() for tl, x in ls.items()}
        atomic_write(self.file(entry, crop), lambda tmp: save_file(tensors, tmp))

    def collate(self, items: Sequence[Mapping[str, Mapping[int, torch.Tensor]]]) -> dict[str, Targets]:
        """Per-crop targets -> one zero-padded float16 Targets per teacher."""
        out = {}
        for name, layers in self.layers.items():
            lens = torch.tensor([item[name][layers[0]].shape[0] for item in items], dtype=torch.long)
            padded = {}
            for tl in layers:
                x = torch.zeros(len(items), int(lens.max()), self.specs[name].dim, dtype=torch.float16)
                for i, item in enumerate(items):
                    x[i, : lens[i]] = item[name][tl]
                padded[tl] = x
            out[name] = Targets(layers=padded, lengths=lens)
        return out


def build_cache(
    cache: TargetCache,
    entries: "Manifest | Sequence[ManifestEntry]",
    data: DataConfig,
    teachers: Mapping[str, torch.nn.Module],
    device: torch.device,
    batch_seconds: float,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> Counter:
    """Compute and store the targets of every segment not yet cached (this rank's share)."""
    from tqdm import tqdm

    if data.crop != "segments":
        raise ValueError("the target cache needs fixed crops: set data.crop=segments (consecutive max_seconds pieces)")
    planner = BatchPlanner(entries, data, max(batch_seconds, data.max_seconds), seed=0)
    counts: Counter = Counter(too_short=planner.skipped["too_short"])
    mine = np.arange(rank, planner.num_units, world_size)
    index, start, frames, samples = planner.crops(mine, None)
    todo = np.ones(mine.shape[0], dtype=bool)
    for j in range(mine.shape[0]):
        crop = Crop(int(index[j]), int(start[j]), int(frames[j]), int(samples[j]))
        todo[j] = not cache.file(planner.entries[crop.index], crop).is_file()
    counts["cached_before"] = int((~todo).sum())
    plan = planner.plan_of(mine[todo])
    batches = RankBatches(plan, 0, 0, len(plan), 1, 0, 1)
    dataset = MicroBatches(planner, batches, refill=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=data.num_workers)
    for micro in tqdm(loader, total=len(plan), desc=f"caching targets (rank {rank})", disable=not progress, unit="batch"):
        counts.update(micro["skipped"])
        if micro["wavs"] is None:
            continue
        wavs, lens = micro["wavs"].to(device), micro["lens"].to(device)
        per_item: list[dict[str, dict[int, torch.Tensor]]] = [{} for _ in micro["crops"]]
        for name, teacher in teachers.items():
            out = teacher(wavs, lens)
            for i in range(len(per_item)):
                n = int(out.lengths[i])
                per_item[i][name] = {tl: out.layers[tl - 1][i, :n] for tl in cache.layers[name]}
        for crop, targets in zip(micro["crops"], per_item):
            cache.write(planner.entries[crop.index], crop, targets)
            counts["written"] += 1
    return counts
