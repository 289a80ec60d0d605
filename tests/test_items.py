"""results/items.py on prediction files in the layouts s3prl's experts and heareval write, with
scores worked out by hand. (tests/test_recipes_e2e.py and tests/test_demo.py read the files the
real tools wrote and check that they give back each logged score.)"""
from __future__ import annotations

import csv
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from results.items import ItemsError, hear_outcomes, superb_outcomes


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def test_speech_commands_items_are_grouped_by_speaker(tmp_path: Path) -> None:
    # s3prl's KS file id is "<label dir>-<file name>"; the speaker is the name before _nohash_.
    _write(tmp_path / "test_predict.txt", ["yes-aa11_nohash_0.wav yes", "no-aa11_nohash_1.wav yes",
                                           "_silence_-fan_nohash_0.wav _silence_", "up-bb22_nohash_0.wav up"])
    _write(tmp_path / "test_truth.txt", ["no-aa11_nohash_1.wav no", "yes-aa11_nohash_0.wav yes",
                                         "up-bb22_nohash_0.wav up", "_silence_-fan_nohash_0.wav _silence_"])
    found = superb_outcomes(tmp_path, "KS")
    assert found is not None and found.score == 75.0
    assert dict(zip(found.ids, found.groups or ())) == {"yes-aa11_nohash_0.wav": "aa11", "no-aa11_nohash_1.wav": "aa11",
                                                         "_silence_-fan_nohash_0.wav": "fan", "up-bb22_nohash_0.wav": "bb22"}
    assert superb_outcomes(tmp_path, "KS", "dev") is None  # no dev files


def test_fluent_commands_needs_all_three_slots_and_reads_voices_from_the_csv(tmp_path: Path) -> None:
    data = tmp_path / "fsc"
    rows = [("wavs/speakers/v1/v1-0000.wav", "v1"), ("wavs/speakers/v1/v1-0001.wav", "v1"), ("wavs/speakers/v2/v2-0000.wav", "v2")]
    (data / "data").mkdir(parents=True)
    with open(data / "data" / "test_data.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
        writer.writerows([i, p, s, "x", "a", "o", "l"] for i, (p, s) in enumerate(rows))
    expdir = tmp_path / "exp"
    _write(expdir / "config_2026-12-01-00-00-00.yaml", ["downstream_expert:", "  datarc:", f"    file_path: {data}"])
    _write(expdir / "test_predict.csv", ["v1-0000,activate,lights,kitchen", "v1-0001,activate,lights,none", "v2-0000,deactivate,music,none"])
    _write(expdir / "test_truth.csv", ["v1-0000,activate,lights,kitchen", "v1-0001,activate,lights,kitchen", "v2-0000,deactivate,music,none"])
    found = superb_outcomes(expdir, "IC")
    assert found is not None and found.score == pytest.approx(200 / 3)  # the location slot is wrong once
    assert found.groups == ("v1", "v1", "v2")


def test_voxceleb_items_are_grouped_by_speaker_and_session(tmp_path: Path) -> None:
    _write(tmp_path / "test_predict.txt", ["id10001-s1esp000-00005 id10001", "id10001-s1esp000-00006 id10002",
                                           "id10002-s2tux001-00001 id10002"])
    _write(tmp_path / "test_truth.txt", ["id10001-s1esp000-00005 id10001", "id10001-s1esp000-00006 id10001",
                                         "id10002-s2tux001-00001 id10002"])
    found = superb_outcomes(tmp_path, "SID")
    assert found is not None and found.score == pytest.approx(200 / 3)
    assert found.groups == ("id10001-s1esp000", "id10001-s1esp000", "id10002-s2tux001")


def test_phone_error_rate_is_edits_over_reference_phones(tmp_path: Path) -> None:
    # 1121-1-0000: one substitution in 4 phones; 1121-1-0001: one deletion in 2; 2300-7-0000: exact (3).
    _write(tmp_path / "test-hyp.ark", ["1121-1-0000 AH B K D", "1121-1-0001 S", "2300-7-0000 IY T S"])
    _write(tmp_path / "test-ref.ark", ["1121-1-0000 AH B C D", "1121-1-0001 S T", "2300-7-0000 IY T S"])
    found = superb_outcomes(tmp_path, "PR")
    assert found is not None and found.score == pytest.approx(100 * 2 / 9)
    assert list(found.num) == [1.0, 1.0, 0.0] and list(found.den) == [4.0, 2.0, 3.0]
    assert found.groups == ("1121", "1121", "2300")


def test_mismatched_prediction_files_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "test_predict.txt", ["a.wav yes"])
    _write(tmp_path / "test_truth.txt", ["b.wav yes"])
    with pytest.raises(ItemsError, match="different files"):
        superb_outcomes(tmp_path, "KS")


def _scene_task(task: Path, labels: dict[str, dict[str, str]]) -> None:
    """A heareval embeddings task directory (scene): metadata, vocabulary and split files."""
    task.mkdir(parents=True, exist_ok=True)
    (task / "task_metadata.json").write_text(json.dumps({
        "task_name": "t", "embedding_type": "scene", "prediction_type": "multiclass", "evaluation": ["top1_acc"],
        "splits": ["train", "valid", "test"]}))
    with open(task / "labelvocabulary.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["idx", "label"], [0, "a"], [1, "b"]])
    for split, items in labels.items():
        (task / f"{split}.json").write_text(json.dumps({f: [lab] for f, lab in items.items()}))


def test_heareval_scene_rows_follow_its_seeded_shuffle(tmp_path: Path) -> None:
    split = {f"{k}_nohash_{i}.wav": ("a" if k == "x" else "b") for k in ("x", "y") for i in range(3)}
    _scene_task(tmp_path, {"train": {"t.wav": "a"}, "valid": {"v.wav": "b", "w.wav": "a"}, "test": split})
    # heareval's embeddings runner: one random.Random(0) shuffles train, then valid, then test
    prng = random.Random(0)
    for name in (["t.wav"], ["v.wav", "w.wav"]):
        prng.shuffle(name)
    order = list(split)
    prng.shuffle(order)
    target = np.array([[1.0, 0.0] if split[f] == "a" else [0.0, 1.0] for f in order])
    predicted = target.copy()
    wrong = order.index("y_nohash_2.wav")
    predicted[wrong] = [0.7, 0.3]  # one "b" file predicted "a"
    with open(tmp_path / "test.predictions.pkl", "wb") as handle:
        pickle.dump({"target": target, "prediction": predicted, "prediction_logit": predicted}, handle)
    found = hear_outcomes(tmp_path)
    assert found is not None and found.ids == tuple(order) and found.score == pytest.approx(500 / 6)
    assert found.num[wrong] == 0 and set(found.groups or ()) == {"x", "y"}
    # rows that do not follow that order are refused rather than mislabelled
    with open(tmp_path / "test.predictions.pkl", "wb") as handle:
        pickle.dump({"target": target[::-1], "prediction": predicted[::-1]}, handle)
    with pytest.raises(ItemsError, match="file order"):
        hear_outcomes(tmp_path)


def test_heareval_event_f_measure_is_pooled_over_files(tmp_path: Path) -> None:
    (tmp_path / "task_metadata.json").write_text(json.dumps({
        "task_name": "e", "embedding_type": "event", "prediction_type": "multilabel",
        "evaluation": ["event_onset_200ms_fms"], "splits": ["train", "valid", "test"]}))
    with open(tmp_path / "labelvocabulary.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["idx", "label"], [0, "dog"], [1, "bell"]])
    target = {"f1.wav": [{"label": "dog", "start": 100.0, "end": 500.0}, {"label": "bell", "start": 1000.0, "end": 1200.0}],
              "f2.wav": [{"label": "dog", "start": 0.0, "end": 300.0}]}
    predicted = {"f1.wav": [{"label": "dog", "start": 150.0, "end": 450.0},  # onset within 200 ms: a hit
                            {"label": "bell", "start": 1500.0, "end": 1700.0}],  # 500 ms late: a miss and a false alarm
                 "f2.wav": []}
    with open(tmp_path / "test.predictions.pkl", "wb") as handle:
        pickle.dump({"target_events": target, "predicted_events": predicted}, handle)
    found = hear_outcomes(tmp_path)
    # f1: TP 1, Nsys 2, Nref 2; f2: TP 0, Nsys 0, Nref 1. F = 2 * 1 / (2 + 3) = 0.4
    assert found is not None and list(found.num) == [2.0, 0.0] and list(found.den) == [4.0, 1.0]
    assert found.score == pytest.approx(40.0)
