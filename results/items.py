"""Per-item outcomes of one probe run, read from the files the tools write for every test item.

- s3prl's classification experts write `<split>_predict.txt` / `<split>_truth.txt`
  (speech_commands, voxceleb1: `file label`) or `<split>_predict.csv` / `<split>_truth.csv`
  (fluent_commands: `file,action,object,location`) at every evaluation; the ctc expert (PR)
  writes `<split>-hyp.ark` / `<split>-ref.ark` (`file phone phone ...`). The recipe's test stage
  evaluates the best-dev checkpoint, so the test files are that checkpoint's. The dev files s3prl
  leaves in the experiment directory are those of the LAST dev evaluation during training, not of
  the best one, so dev outcomes are read only from `best-dev/` (`usad superb run --evaluate-dev`).
- heareval's predictions runner pickles `<test split>.predictions.pkl`: for scene tasks the
  targets and predictions as two [items x labels] arrays in the order of its embeddings memmap
  (heareval shuffles the files with random.Random(0), replayed here and checked against the
  labels), for event tasks the predicted and target events per file.

Items are grouped by the unit that is not independent where the dataset's naming shows it:
the speaker of Speech Commands (`<speaker>_nohash_<n>.wav`), of LibriSpeech
(`<speaker>-<chapter>-<utt>`) and of Fluent Speech Commands (`speakerId` in its csv), the
speaker and session of VoxCeleb1 (`id10001/<session>/<n>.wav`). Elsewhere every item is its own group.
"""
from __future__ import annotations

import csv
import json
import pickle
import random
from pathlib import Path

import numpy as np

from . import s3prl_logs
from .intervals import Outcomes

NOHASH = "_nohash_"
BEST_DEV_DIR = "best-dev"  # downstream_recipes.superb.runner.BEST_DEV_DIR (results never imports the recipes)


class ItemsError(ValueError):
    """Prediction files that do not fit together (other items, unreadable lines)."""


def _pairs(path: Path, sep: "str | None") -> dict[str, str]:
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.partition(sep) if sep else line.partition(" ")
        if not key:
            raise ItemsError(f"{path}:{n}: expected 'file{sep or ' '}prediction', got {line!r}")
        out[key.strip()] = value.strip()
    return out


def _matched(predicted: dict[str, str], truth: dict[str, str], where: Path) -> list[str]:
    if set(predicted) != set(truth):
        raise ItemsError(f"{where}: predictions and truth name different files "
                         f"({len(set(predicted) ^ set(truth))} differ)")
    return sorted(truth)


def _speech_commands_group(fileid: str) -> str:
    """s3prl's KS file id is `<label>-<file>`; Speech Commands files are `<speaker>_nohash_<n>`."""
    name = fileid.split("-", 1)[-1]
    return name.split(NOHASH)[0] if NOHASH in name else fileid


def _fluent_groups(expdir: Path, split: str) -> "dict[str, str] | None":
    """utterance stem -> speakerId, from the split's csv that the run read."""
    datarc = (s3prl_logs.read_config(expdir).get("downstream_expert") or {}).get("datarc") or {}
    root = datarc.get("file_path")
    table = Path(str(root)) / "data" / f"{'valid' if split == 'dev' else split}_data.csv" if root else None
    if table is None or not table.is_file():
        return None
    with open(table, newline="") as handle:
        return {Path(row["path"]).stem: row["speakerId"] for row in csv.DictReader(handle)}


def superb_outcomes(expdir: Path, task: str, split: str = "test") -> "Outcomes | None":
    """Per-item outcomes of a SUPERB run's `split` evaluation, or None when the files are absent."""
    run_dir = Path(expdir)
    expdir = run_dir / BEST_DEV_DIR if split == "dev" else run_dir
    if task == "PR":
        hyp, ref = expdir / f"{split}-hyp.ark", expdir / f"{split}-ref.ark"
        if not (hyp.is_file() and ref.is_file()):
            return None
        import editdistance

        hyps, refs = _pairs(hyp, None), _pairs(ref, None)
        ids = _matched(hyps, refs, hyp)
        edits = [editdistance.eval(hyps[i].split(" "), refs[i].split(" ")) for i in ids]
        lengths = [len(refs[i].split(" ")) for i in ids]  # s3prl's per(): ed over ' '-split tokens
        return Outcomes(tuple(ids), np.array(edits, float), np.array(lengths, float),
                        tuple(i.split("-")[0] for i in ids))
    if task == "IC":
        pred, truth = expdir / f"{split}_predict.csv", expdir / f"{split}_truth.csv"
        sep = ","
    elif task in ("KS", "SID"):
        pred, truth = expdir / f"{split}_predict.txt", expdir / f"{split}_truth.txt"
        sep = " "
    else:
        return None
    if not (pred.is_file() and truth.is_file()):
        return None
    p, t = _pairs(pred, sep), _pairs(truth, sep)
    ids = _matched(p, t, pred)
    correct = np.array([p[i] == t[i] for i in ids], float)
    groups: "tuple[str, ...] | None" = None
    if task == "KS":
        groups = tuple(_speech_commands_group(i) for i in ids)
    elif task == "SID":  # s3prl's id: <speaker>-<session>-<n>
        groups = tuple(i.rsplit("-", 1)[0] for i in ids)
    else:
        speakers = _fluent_groups(run_dir, split)
        if speakers is not None and all(i in speakers for i in ids):
            groups = tuple(speakers[i] for i in ids)
    return Outcomes(tuple(ids), correct, np.ones(len(ids)), groups)


def _scene_order(task_dir: Path, split: str) -> list[str]:
    """The files of heareval's `<split>.embeddings.npy` rows: its embeddings runner shuffles each
    split's files with one random.Random(0), split after split in task_metadata's order."""
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    prng = random.Random()
    prng.seed(0)
    for name in meta["splits"]:
        files = list(json.loads((task_dir / f"{name}.json").read_text()))
        prng.shuffle(files)
        if name == split:
            return files
    raise ItemsError(f"{task_dir}: split {split!r} is not in task_metadata.json's splits")


def _event_counts(predicted: dict, target: dict, labels: list[str], t_collar: float) -> tuple[float, float]:
    """2 x true positives and system + reference events of one file, as heareval's
    event_onset_*_fms scores them (sed_eval, onsets only); F = sum(2 TP) / sum(Nsys + Nref)."""
    import sed_eval
    from dcase_util.containers import MetaDataContainer

    def container(events: list, filename: str) -> MetaDataContainer:
        return MetaDataContainer([{"event_label": str(e["label"]), "event_onset": e["start"] / 1000.0,
                                   "event_offset": e["end"] / 1000.0, "file": filename} for e in events])

    metrics = sed_eval.sound_event.EventBasedMetrics(event_label_list=labels, evaluate_onset=True,
                                                     evaluate_offset=False, t_collar=t_collar)
    metrics.evaluate(reference_event_list=container(target, "f"), estimated_event_list=container(predicted, "f"))
    o = metrics.overall
    return 2.0 * o["Ntp"], float(o["Nsys"] + o["Nref"])


EVENT_COLLARS = {"event_onset_200ms_fms": 0.2, "event_onset_50ms_fms": 0.05}
SCENE_METRICS = ("top1_acc", "pitch_acc")


def hear_outcomes(task_dir: Path, split: str = "test") -> "Outcomes | None":
    """Per-item outcomes of heareval's test predictions (its primary score), or None when the
    task has no prediction file or a score that is not a ratio of sums (mAP, d')."""
    task_dir = Path(task_dir)
    path = task_dir / f"{split}.predictions.pkl"
    if not path.is_file():
        return None
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    metric = str((meta.get("evaluation") or [""])[0])
    with open(path, "rb") as handle:
        saved = pickle.load(handle)
    if meta.get("embedding_type") == "event":
        if metric not in EVENT_COLLARS:
            return None
        labels = [row["label"] for row in csv.DictReader(open(task_dir / "labelvocabulary.csv"))]
        targets, predicted = saved["target_events"], saved["predicted_events"]
        ids = sorted(predicted)  # heareval scores the files it has predictions for
        counts = [_event_counts(predicted[f], targets.get(f, []), labels, EVENT_COLLARS[metric]) for f in ids]
        return Outcomes(tuple(ids), np.array([c[0] for c in counts]), np.array([c[1] for c in counts]))
    if metric not in SCENE_METRICS or meta.get("prediction_type") != "multiclass":
        return None
    files = _scene_order(task_dir, split)
    target = np.asarray(saved["target"]).argmax(1)
    predicted = np.asarray(saved["prediction"]).argmax(1)
    truth = json.loads((task_dir / f"{split}.json").read_text())
    vocab = {row["label"]: int(row["idx"]) for row in csv.DictReader(open(task_dir / "labelvocabulary.csv"))}
    expected = [vocab[str(truth[f][0])] for f in files]
    if len(files) != len(target) or list(target) != expected:
        raise ItemsError(f"{path}: its rows do not follow heareval's file order for {split} "
                         f"({len(target)} rows, {len(files)} files); cannot tell which file each row is")
    groups = tuple(f.split(NOHASH)[0] if NOHASH in f else f for f in files)
    return Outcomes(tuple(files), (predicted == target).astype(float), np.ones(len(files)), groups)
