"""hear-validator and heareval's own runners, through `usad hear ...`, on generated HEAR tasks."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SR = 16000
CLIP_SECONDS = 1.0
# A grid that trains one tiny MLP for 2 epochs (heareval merges this over its own grid).
FAST_GRID = {
    "hidden_layers": [1],
    "hidden_dim": [16],
    "max_epochs": [2],
    "check_val_every_n_epoch": [1],
    "patience": [1],
    "batch_size": [256],
}


def _usad(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    return subprocess.run(
        [sys.executable, "-m", "downstream_recipes.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )


def _tone(freq: float, seed: int) -> np.ndarray:
    t = np.arange(int(CLIP_SECONDS * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(t.shape)
    return (0.3 * np.sin(2 * math.pi * freq * t) + 0.01 * noise).astype(np.float32)


def make_task(root: Path, name: str, kind: str) -> Path:
    """A HEAR-format task (hear-preprocess layout): task_metadata.json, labelvocabulary.csv,
    <split>.json and 16000/<split>/*.wav, for a `scene` (multiclass, top1_acc) or `event`
    (multilabel, event_onset_200ms_fms) task with two tone labels."""
    task = root / name
    labels = {"low": 300.0, "high": 1200.0}
    metadata = {
        "task_name": name,
        "version": "toy",
        "embedding_type": kind,
        "prediction_type": "multiclass" if kind == "scene" else "multilabel",
        "split_mode": "trainvaltest",
        "sample_duration": CLIP_SECONDS,
        "evaluation": ["top1_acc"] if kind == "scene" else ["event_onset_200ms_fms"],
        "splits": ["train", "valid", "test"],
        "evaluation_params": {"task_specific_param_grid": FAST_GRID},
    }
    if kind == "event":
        metadata["evaluation_params"]["event_postprocessing_grid"] = {"median_filter_ms": [0], "min_duration": [0]}
    task.mkdir(parents=True)
    (task / "task_metadata.json").write_text(json.dumps(metadata))
    with open(task / "labelvocabulary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["idx", "label"])
        writer.writerows(enumerate(labels))
    for split_index, split in enumerate(metadata["splits"]):
        audio_dir = task / str(SR) / split
        audio_dir.mkdir(parents=True)
        split_labels = {}
        for i in range(4):
            label = list(labels)[i % 2]
            filename = f"{split}_{i}.wav"
            sf.write(audio_dir / filename, _tone(labels[label], 10 * split_index + i), SR)
            if kind == "scene":
                split_labels[filename] = [label]
            else:
                split_labels[filename] = [{"label": label, "start": 200.0, "end": 700.0}]
        (task / f"{split}.json").write_text(json.dumps(split_labels))
    return task


def test_validate_passes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = _usad(["hear", "validate", "--model", str(tiny_checkpoint), "--device", "cpu"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Looks good!" in result.stdout
    assert "Interval between timestamps is 20.0ms" in result.stdout


def test_validate_rejects_missing_checkpoint(tmp_path: Path) -> None:
    result = _usad(["hear", "validate", "--model", str(tmp_path / "none.safetensors")], tmp_path)
    assert result.returncode == 2
    assert "checkpoint not found" in result.stderr and "usad init" in result.stderr


def test_embed_and_predict_runners(tiny_checkpoint: Path, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    make_task(tasks, "toy_scene", "scene")
    make_task(tasks, "toy_event", "event")

    embed = _usad(
        ["hear", "embed", "hear_api", "--model", str(tiny_checkpoint), "--tasks-dir", str(tasks),
         "--embeddings-dir", str(tmp_path / "embeddings"), "--model-options", '{"layers": "last"}'],
        tmp_path,
    )
    assert embed.returncode == 0, embed.stderr[-3000:]
    out = tmp_path / "embeddings" / "hear_api-layers=last"  # heareval names it after the options
    for name in ("toy_scene", "toy_event"):
        assert (out / name / ".done.embeddings").exists()
    assert json.loads((out / "toy_scene" / "test.embedding-dimensions.json").read_text()) == [4, 192]
    frames = (int((CLIP_SECONDS * SR - 400) // 160) + 1 - 1) // 2 + 1
    assert json.loads((out / "toy_event" / "test.embedding-dimensions.json").read_text()) == [4 * frames, 192]
    stamps = json.loads((out / "toy_event" / "test" / "test_0.wav.timestamps.json").read_text())
    assert stamps[:2] == [12.5, 32.5] and len(stamps) == frames

    predict = _usad(
        ["hear", "predict", str(out / "toy_scene"), str(out / "toy_event"), "--grid", "faster", "--grid-points", "1"],
        tmp_path,
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    scene = json.loads((out / "toy_scene" / "test.predicted-scores.json").read_text())
    assert 0.0 <= scene["test"]["test_top1_acc"] <= 1.0
    event = json.loads((out / "toy_event" / "test.predicted-scores.json").read_text())
    assert 0.0 <= event["test"]["test_event_onset_200ms_fms"] <= 1.0


def test_embed_passes_heareval_errors_through(tmp_path: Path) -> None:
    result = _usad(["hear", "embed", "hear_api", "--tasks-dir", str(tmp_path / "missing")], tmp_path)
    assert result.returncode == 2
    assert "Cannot locate directory containing tasks" in result.stderr


def test_help_is_heareval_help(tmp_path: Path) -> None:
    result = _usad(["hear", "embed", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage: usad hear embed [OPTIONS] MODULE" in result.stdout and "--model-options" in result.stdout
