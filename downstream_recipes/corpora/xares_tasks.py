"""X-ARES tasks in xares's WebDataset layout, made from the HEAR-format tasks' own audio and labels:

  <root>/<task>/<split>-000000.tar   samples: <key>.wav (the HEAR clip's bytes) + <key>.json (labels)
  <root>/<task>/task.json            what downstream_recipes/xares/tasks.py turns into an xares TaskConfig
  <root>/<task>/README.md            datasheet

Every HEAR split becomes the X-ARES split of the same name (train/valid/test, or the k-fold
folds), so no clip of an evaluation split ever reaches a training one. One task per domain at
least: keywords (speech), sound_events (sound, 5 folds like ESC-50), instrument_family (music,
like NSynth-Instruments) and event_detection (a frame-level task like DESED).
"""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

from .common import Size, table, write_datasheet

VERSION = "usad-xares-1"
SHARD_SAMPLES = 2000  # per tar; xares reads a split as the glob <split>-*.tar

# HEAR task -> (X-ARES formal name, domain, the X-ARES task it mirrors)
TASKS: dict[str, tuple[str, str, str]] = {
    "keywords": ("Keywords (local)", "speech", "Speech Commands V1"),
    "sound_events": ("Sound events (local)", "sound", "ESC-50 (5 folds)"),
    "instrument_family": ("Instrument family (local)", "music", "NSynth-Instruments"),
    "event_detection": ("Event detection (local)", "sound", "DESED (frame-level)"),
}


def _sample_key(filename: str) -> str:
    """webdataset splits a member name at its first dot, so a key keeps none."""
    return Path(filename).stem.replace(".", "_")


def _clip_label(value: list) -> dict:
    if len(value) != 1:
        raise ValueError(f"an X-ARES clip task takes one label per clip, got {value}")
    return {"label": value[0]}


def _events(value: list) -> dict:
    """HEAR events (ms) -> X-ARES's DESED-style onset/offset in seconds."""
    return {"events": [{"label": e["label"], "onset": e["start"] / 1000.0, "offset": e["end"] / 1000.0} for e in value]}


def _write_split(hear_task: Path, split: str, out: Path, events: bool) -> int:
    """One split's clips into <out>/<split>-NNNNNN.tar; returns the number of samples."""
    import webdataset as wds

    labels = json.loads((hear_task / f"{split}.json").read_text())
    keys: dict[str, str] = {}
    with wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=SHARD_SAMPLES, verbose=0) as sink:
        for filename in sorted(labels):
            key = _sample_key(filename)
            if key in keys:
                raise ValueError(f"{hear_task}/{split}: {filename} and {keys[key]} give the same WebDataset key {key!r}")
            keys[key] = filename
            audio = hear_task / "16000" / split / filename
            meta = _events(labels[filename]) if events else _clip_label(labels[filename])
            meta["source"] = f"{hear_task.name}/16000/{split}/{filename}"
            sink.write({"__key__": key, "wav": audio.read_bytes(), "json": json.dumps(meta).encode()})
    return len(keys)


def write_task(hear_task: Path, out: Path) -> dict:
    """One HEAR task -> one X-ARES task folder; returns its task.json."""
    meta = json.loads((hear_task / "task_metadata.json").read_text())
    with (hear_task / "labelvocabulary.csv").open() as f:
        classes = [row["label"] for row in csv.DictReader(f)]
    k_fold = meta["split_mode"] == "new_split_kfold"
    frame = meta["embedding_type"] == "event"
    out.mkdir(parents=True, exist_ok=True)
    counts = {split: _write_split(hear_task, split, out, frame) for split in meta["splits"]}
    formal_name, domain, mirrors = TASKS[hear_task.name]
    spec = {
        "name": hear_task.name, "formal_name": formal_name, "domain": domain, "version": VERSION,
        "task_type": "frame" if frame else "clip", "splits": meta["splits"], "k_fold": k_fold,
        "classes": classes, "metric": "segmentf1_macro" if frame else "accuracy",
        "clip_seconds": meta["sample_duration"], "counts": counts,
        # X-ARES weighs each task by its test set size (one fold's for k-fold tasks)
        "eval_weight": round(sum(counts.values()) / len(counts)) if k_fold else counts["test"],
        "source": f"hear/tasks/{hear_task.name}",
    }
    (out / "task.json").write_text(json.dumps(spec, indent=2) + "\n")
    splits = "k-fold over " + ", ".join(meta["splits"]) if k_fold else "train / valid / test"
    write_datasheet(out / "README.md", f"X-ARES task {hear_task.name}", {
        "Task": f"{formal_name}, laid out like X-ARES's {mirrors}: {domain}, {spec['task_type']}-level, "
        f"{len(classes)} classes, X-ARES metric {spec['metric']} (MLP{'' if frame else ' and kNN'}), clips of "
        f"{meta['sample_duration']} s at 16 kHz, {splits}.",
        "Contents": table(("split", "samples", "shards"), [(s, n, f"{s}-*.tar") for s, n in counts.items()]),
        "Sources": f"The audio and labels of the HEAR task `{spec['source']}` (see ../../hear/tasks/{hear_task.name}/README.md "
        "for sources, licences and real recordings): each HEAR split is the X-ARES split of the same name, clip for clip, "
        "so evaluation clips never reach a training split. Each sample's json names its HEAR file (`source`).",
        "Samples": "`<key>.wav`: the HEAR clip's bytes (16 kHz PCM WAV); `<key>.json`: "
        + ("`{\"events\": [{\"label\", \"onset\", \"offset\"}]}` in seconds." if frame else "`{\"label\": CLASS}`."),
    })
    return spec


def build(root: Path, hear_root: Path, size: Size, seed: int) -> None:
    """Every task of TASKS from the HEAR stage's tasks folder (same size and seed)."""
    if importlib.util.find_spec("webdataset") is None:
        raise ValueError("the xares stage writes WebDataset shards and needs webdataset: pip install -e '.[xares]' "
                         "(or leave the stage out: --stage NAME for the others)")
    tasks_dir = hear_root / "tasks"
    missing = [name for name in TASKS if not (tasks_dir / name / "task_metadata.json").is_file()]
    if missing:
        raise ValueError(f"{tasks_dir}: HEAR tasks {missing} not found; the xares stage reads the hear stage's output")
    specs = [write_task(tasks_dir / name, root / name) for name in TASKS]
    rows = [(s["name"], s["formal_name"], s["domain"], TASKS[s["name"]][2], s["task_type"], s["metric"],
             ", ".join(f"{k} {n}" for k, n in s["counts"].items())) for s in specs]
    write_datasheet(root / "README.md", f"X-ARES tasks (local, size {size.name}, seed {seed})", {
        "Tasks": table(("task", "formal name", "domain", "like X-ARES's", "type", "metric", "samples per split"), rows)
        + "\n\nEach task folder has its own README.md datasheet and a task.json that "
        "`downstream_recipes/xares/tasks.py` turns into an xares TaskConfig (no zenodo_id: local data).",
        "Run": "`usad xares run -k CKPT --tasks <this folder> --runs-dir runs`: X-ARES's own runner (`python -m xares.run`), "
        "one task per process, MLP and kNN scores in xares's own score files, then `usad leaderboard runs`.",
    })
