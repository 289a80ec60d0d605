"""X-ARES task configs for the local tasks `usad corpora build` writes (corpora/xares_tasks.py).

A local task is a folder: WebDataset shards `<split>-*.tar` plus `task.json` (plain data: classes,
splits or folds, metric, task type, weight). `build_task` turns it into xares's own TaskConfig
with no zenodo_id and `private=True`, which is how xares runs a task on local data: it never
downloads, and reads the shards once `<env_root>/<name>/.audio_tar_ready` exists (the runner
writes it). Shards stay where the corpora are; xares's outputs (embeddings, probe checkpoints,
score files) go to `<env_root>/<name>/`, one env root per run.

xares loads a task from a module path and calls its one attribute ending in `_config` with the
encoder: that is `local_task_config` below, which reads the task folder and env root from
USAD_XARES_TASK and USAD_XARES_ENV_ROOT (`usad xares run` sets both, one task per process):

    USAD_XARES_TASK=corpora/xares/keywords USAD_XARES_ENV_ROOT=env USAD_XARES_CHECKPOINT=ckpt \\
        python -m downstream_recipes.xares.entry usad_upstream/xares_encoder.py downstream_recipes/xares/tasks.py
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from ..taskdirs import select_task_dirs

TASK_ENV = "USAD_XARES_TASK"
ENV_ROOT_ENV = "USAD_XARES_ENV_ROOT"
TASK_FILE = "task.json"
TASK_TYPES = ("clip", "frame")
READY_MARKER = ".audio_tar_ready"  # xares.common.XaresSettings.audio_ready_filename
ENCODED_MARKER = ".encoded_tar_ready"  # xares.common.XaresSettings.encoded_ready_filename


def shard_pattern(task_dir: Path, split: str) -> str:
    """The glob xares expands for one split (absolute, so the shards need not move)."""
    return str(Path(task_dir).resolve() / f"{split}-*.tar")


def encoded_pattern(split: str, k_fold: bool) -> str:
    """The name of the shards xares encodes a split into (xares.task.TaskConfig.update_tar_name_of_split)."""
    return f"wds-encoded-fold-{split}-*.tar" if k_fold else f"wds-encoded-{split}*.tar"


def read_task(task_dir: "str | Path") -> dict:
    """task.json of a local task, checked: every field there and a shard for every split."""
    task_dir = Path(task_dir)
    path = task_dir / TASK_FILE
    if not path.is_file():
        raise ValueError(f"{task_dir}: not an X-ARES task folder (no {TASK_FILE}; `usad corpora build --stage xares` writes them)")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    required = ("name", "formal_name", "task_type", "splits", "k_fold", "classes", "metric", "clip_seconds", "eval_weight",
                "counts")
    missing = [key for key in required if key not in spec]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}")
    if spec["task_type"] not in TASK_TYPES:
        raise ValueError(f"{path}: task_type {spec['task_type']!r}, expected one of {list(TASK_TYPES)}")
    if not spec["k_fold"] and list(spec["splits"]) != ["train", "valid", "test"]:
        raise ValueError(f"{path}: splits {spec['splits']}, expected ['train', 'valid', 'test'] (or k_fold: true)")
    if set(spec["counts"]) != set(spec["splits"]):
        raise ValueError(f"{path}: counts name splits {sorted(spec['counts'])}, not the task's {spec['splits']}")
    if len(spec["classes"]) < 2:
        raise ValueError(f"{path}: {len(spec['classes'])} classes, expected at least 2")
    empty = [split for split in spec["splits"] if not list(task_dir.glob(f"{split}-*.tar"))]
    if empty:
        raise ValueError(f"{task_dir}: no WebDataset shard for split(s) {empty} (expected {shard_pattern(task_dir, empty[0])})")
    return spec


def task_dirs(tasks: "str | Path", only: "tuple[str, ...]" = ()) -> list[Path]:
    """The local task folders under `tasks` (or `tasks` itself when it is one), optionally a named subset."""
    return select_task_dirs(tasks, TASK_FILE, only, "--tasks", "X-ARES task", itself=True)


def _frame_targets(spec: dict, hop_ms: float) -> Callable[[dict], Any]:
    """Events in seconds -> a [classes, frames] 0/1 target on the encoder's frame grid, with
    frames counted as xares's own DESED task counts them (ceil(seconds / hop))."""
    import torch

    index = {name: i for i, name in enumerate(spec["classes"])}

    def frames(seconds: float) -> int:
        return math.ceil(seconds / (hop_ms / 1000.0))

    def transform(meta: dict) -> "torch.Tensor":
        target = torch.zeros(len(index), frames(spec["clip_seconds"]), dtype=torch.float32)
        for event in meta["events"]:
            target[index[event["label"]], frames(event["onset"]) : frames(event["offset"])] = 1.0
        return target

    return transform


def build_task(task_dir: "str | Path", encoder: Any, env_root: "str | Path") -> Any:
    """The xares TaskConfig of one local task. `encoder` may be None (xares's download stage)."""
    from xares.task import TaskConfig

    task_dir = Path(task_dir)
    spec = read_task(task_dir)
    index = {name: i for i, name in enumerate(spec["classes"])}
    common: dict[str, Any] = dict(
        name=spec["name"], formal_name=spec["formal_name"], encoder=encoder, env_root=str(env_root),
        private=True, zenodo_id=None, output_dim=len(index), metric=spec["metric"], eval_weight=int(spec["eval_weight"]),
    )
    if spec["task_type"] == "frame":
        hop_ms = float(encoder.hop_size_in_ms) if encoder is not None else 0.0
        common.update(task_type="frame", criterion="BCEWithLogitsLoss", do_knn=False,
                      metric_args=dict(hop_size_in_ms=hop_ms, segment_length_in_s=1.0),
                      label_processor=_frame_targets(spec, hop_ms) if encoder is not None else None)
    else:
        common["label_processor"] = lambda meta: index[meta["label"]]
    if spec["k_fold"]:
        config = TaskConfig(k_fold_splits=list(spec["splits"]), **common)
    else:
        config = TaskConfig(train_split="train", valid_split="valid", test_split="test", **common)
    config.audio_tar_name_of_split = {split: shard_pattern(task_dir, split) for split in spec["splits"]}
    return config


def local_task_config(encoder: Any) -> Any:
    """xares's entry point for the task named by USAD_XARES_TASK (env root: USAD_XARES_ENV_ROOT)."""
    missing = [name for name in (TASK_ENV, ENV_ROOT_ENV) if not os.environ.get(name)]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: point {TASK_ENV} at a local X-ARES task folder and "
                         f"{ENV_ROOT_ENV} at the folder for xares's outputs (`usad xares run` sets both)")
    return build_task(os.environ[TASK_ENV], encoder, os.environ[ENV_ROOT_ENV])
