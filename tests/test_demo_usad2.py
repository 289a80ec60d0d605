"""The usad2 demo recipe (`usad demo run --recipe usad2`): its per-item readers and paired
bootstrap (fast), and the QUICK run end to end (marked `demo`)."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from downstream_recipes.demo.usad2 import (
    QUICK,
    STUDENTS,
    bootstrap_gain,
    collect_items,
    compare_students,
    hear_items,
    superb_items,
    verdict,
)


def test_bootstrap_gain_points_signs_and_intervals() -> None:
    rng = np.random.default_rng(0)
    items = [f"u{i}" for i in range(200)]
    a = [{u: (float(i % 2), 1.0) for i, u in enumerate(items)}]  # 50% correct
    b = [{u: (float(i % 4 != 0), 1.0) for i, u in enumerate(items)}]  # 75% correct: b's errors are a subset of a's
    score_a, score_b, gain, draws = bootstrap_gain(a, b, False, rng, draws=2000)
    assert (score_a, score_b, gain) == (50.0, 75.0, 25.0)
    low, high = np.percentile(draws, [2.5, 97.5])
    assert 15 < low < 25 < high < 35 and verdict(low, high) == "helped"
    # a PER-like task (lower is better): the gain is a minus b, so positive still means b is better
    edits_a = [{u: (2.0, 10.0) for u in items}]
    edits_b = [{u: (1.0, 10.0) for u in items}]
    assert bootstrap_gain(edits_a, edits_b, True, rng, draws=200)[2] == pytest.approx(10.0)
    assert bootstrap_gain(edits_b, edits_a, True, rng, draws=200)[2] == pytest.approx(-10.0)
    # the same model twice: every draw's gain is exactly 0 (paired items), so not "helped"
    same = bootstrap_gain(a, a, False, rng, draws=500)[3]
    assert np.all(same == 0) and verdict(0.0, 0.0) == "inconclusive"
    # several probe seeds: the point estimate is the seeds' mean; seed-to-seed spread widens the interval
    seeds = [{u: (float(i % 2), 1.0) for i, u in enumerate(items)}, {u: (float(i % 2 == 0 or i % 5 == 0), 1.0) for i, u in enumerate(items)}]
    s_a, _, _, two = bootstrap_gain(seeds, b, False, np.random.default_rng(1), draws=2000)
    assert s_a == pytest.approx((50.0 + 60.0) / 2)
    one = bootstrap_gain(seeds[:1], b, False, np.random.default_rng(1), draws=2000)[3]
    assert np.percentile(two, 97.5) - np.percentile(two, 2.5) > np.percentile(one, 97.5) - np.percentile(one, 2.5)
    with pytest.raises(ValueError, match="different test items"):
        bootstrap_gain(a, [{"x": (1.0, 1.0)}], False, rng)


def test_superb_prediction_files_to_items(tmp_path: Path) -> None:
    (tmp_path / "test-hyp.ark").write_text("utt1 a b c\nutt2 a\n")
    (tmp_path / "test-ref.ark").write_text("utt1 a x c d\nutt2 a\n")
    items = superb_items(tmp_path, "PR")
    assert items == {"utt1": (2.0, 4.0), "utt2": (0.0, 1.0)}  # one substitution + one deletion
    (tmp_path / "test_predict.txt").write_text("a.wav yes\nb.wav no\n")
    (tmp_path / "test_truth.txt").write_text("a.wav yes\nb.wav up\n")
    assert superb_items(tmp_path, "KS") == {"a.wav": (1.0, 1.0), "b.wav": (0.0, 1.0)}
    (tmp_path / "test_predict.csv").write_text("x.wav,activate,lights,kitchen\ny.wav,bring,shoes,none\n")
    (tmp_path / "test_truth.csv").write_text("x.wav,activate,lights,kitchen\ny.wav,bring,socks,none\n")
    assert superb_items(tmp_path, "IC") == {"x.wav": (1.0, 1.0), "y.wav": (0.0, 1.0)}  # all three slots must match


def _hear_task(root: Path, predictions: dict, labels: list[str], evaluation: str) -> Path:
    root.mkdir(parents=True)
    with open(root / "test.predictions.pkl", "wb") as handle:
        pickle.dump(predictions, handle)
    (root / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{l}\n" for i, l in enumerate(labels)))
    (root / "task_metadata.json").write_text(json.dumps({"evaluation": [evaluation]}))
    return root


def test_hear_predictions_to_items(tmp_path: Path) -> None:
    target = torch.eye(3)[[0, 1, 2, 1]]
    prediction = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.8, 0.1]])
    scene = _hear_task(tmp_path / "scene", {"target": target, "prediction": prediction, "prediction_logit": prediction},
                       ["a", "b", "c"], "top1_acc")
    assert hear_items(scene) == {"0": (1.0, 1.0), "1": (1.0, 1.0), "2": (0.0, 1.0), "3": (1.0, 1.0)}
    # events: the per-file counts must add up to heareval's own onset F-measure over all files
    from heareval.score import available_scores

    target_events = {"f1": [{"label": "dog", "start": 100.0, "end": 500.0}, {"label": "cat", "start": 900.0, "end": 1200.0}],
                     "f2": [{"label": "dog", "start": 0.0, "end": 300.0}], "f3": [{"label": "cat", "start": 50.0, "end": 80.0}]}
    predicted_events = {"f1": [{"label": "dog", "start": 150.0, "end": 400.0}, {"label": "dog", "start": 1000.0, "end": 1100.0}],
                        "f2": [{"label": "dog", "start": 350.0, "end": 600.0}], "f3": []}
    events = _hear_task(tmp_path / "events", {"target_events": target_events, "predicted_events": predicted_events},
                        ["cat", "dog"], "event_onset_200ms_fms")
    items = hear_items(events)
    score = available_scores["event_onset_200ms_fms"](label_to_idx={"cat": 0, "dog": 1})
    reference = dict(score(predicted_events, target_events))["f_measure"]
    assert items["f1"] == (2.0, 4.0) and items["f3"] == (0.0, 1.0)
    assert sum(n for n, _ in items.values()) / sum(d for _, d in items.values()) == pytest.approx(reference)


def test_compare_students_reports_tasks_domains_and_gaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from downstream_recipes.demo import usad2

    reported = {("usad2_equal", "SUPERB", "PR"): 50.0, ("usad2_w10", "SUPERB", "PR"): 0.0,
                ("usad2_equal", "HEAR", "pitch"): 50.0, ("usad2_w10", "HEAR", "pitch"): 75.0}
    monkeypatch.setattr(usad2, "tool_scores", lambda runs_dir: reported)  # what s3prl / heareval logged
    runs = tmp_path / "eval"
    for model, correct in (("usad2_equal", [1, 0, 0, 1]), ("usad2_w10", [1, 1, 1, 1])):
        expdir = runs / "superb" / "PR" / model
        expdir.mkdir(parents=True)
        (expdir / "test-hyp.ark").write_text("".join(f"u{i} a{'' if c else 'x'}\n" for i, c in enumerate(correct)))
        (expdir / "test-ref.ark").write_text("".join(f"u{i} a\n" for i in range(4)))
        _hear_task(runs / "hear" / model / "embeddings" / "hear_api" / "pitch",
                   {"target": torch.eye(2)[[0, 1, 0, 1]], "prediction": torch.eye(2)[[0, 1] + correct[:2]]}, ["p0", "p1"], "pitch_acc")
    assert set(collect_items(runs, "usad2_w10", ("pitch",), ("PR",))) == {("SUPERB", "PR"), ("HEAR", "pitch")}
    result = compare_students(runs, "usad2_w10", "usad2_equal", QUICK)
    rows = {r["task"]: r for r in result["tasks"]}
    assert rows["PR"]["usad2_equal"] == 50.0 and rows["PR"]["usad2_w10"] == 0.0 and rows["PR"]["gain"] == 50.0
    assert rows["pitch"]["gain"] == 25.0 and rows["keywords"]["status"].startswith("gap")
    assert result["domains"]["speech"]["status"] == "gap"  # keywords is missing
    assert result["domains"]["music"]["gain"] == 25.0 and result["domains"]["music"]["tasks"] == 1
    assert result["domains"]["sound"]["status"] == "gap"
    # item results that do not add up to the tool's own score decide nothing
    reported[("usad2_w10", "HEAR", "pitch")] = 80.0
    result = compare_students(runs, "usad2_w10", "usad2_equal", QUICK)
    pitch = next(r for r in result["tasks"] if r["task"] == "pitch")
    assert "do not reproduce the reported score (usad2_w10 75.00 vs 80.00)" in pitch["status"] and "gain" not in pitch
    assert result["domains"]["music"]["status"] == "gap"


@pytest.mark.demo
@pytest.mark.timeout(900)
def test_quick_usad2_demo_end_to_end(tmp_path: Path) -> None:
    run_dir, results = tmp_path / "run", tmp_path / "leaderboard"
    cmd = [sys.executable, "-m", "downstream_recipes.cli", "demo", "run", "--recipe", "usad2", "--quick",
           "--run-dir", str(run_dir), "--results", str(results)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    models = run_dir / "models"
    configs = {s: yaml.safe_load((models / f"distill_{s}.yaml").read_text()) for s in STUDENTS}
    for config in configs.values():
        config.pop("run_dir")
        assert {n: t["domain"] for n, t in config["teachers"].items()} == {"speech": "speech", "sound": "sound", "music": "music"}
    omegas = [c["objective"].pop("domain_omega") for c in configs.values()]
    assert omegas == [10, None] and configs["usad2_w10"] == configs["usad2_equal"]  # nothing else differs
    metrics = pd.read_csv(models / "distill_usad2_w10" / "metrics.csv")
    assert {f"loss/{t}/{d}" for t in ("speech", "sound", "music") for d in ("speech", "sound", "music")} <= set(metrics.columns)
    report = json.loads((results / "domain_weighting.json").read_text())
    assert set(report["domains"]) == {"speech", "sound", "music"}
    assert {r["task"] for r in report["tasks"]} == set(QUICK.superb_steps) | set(QUICK.hear_tasks)
    for row in report["tasks"]:
        assert row.get("verdict") in ("helped", "hurt", "inconclusive"), row  # every task measured, no gap
    md = (results / "leaderboard.md").read_text()
    assert "## Domain-aware weighting" in md and "usad2_w10" in md and "usad2_equal" in md


def test_full_usad2_demo_builds_its_stages_with_one_seed_per_probe(tmp_path: Path) -> None:
    """The full recipe (never run by the suite: an hour) must at least plan: its budget has no
    probe seeds, and its teachers are evaluated as context."""
    from downstream_recipes.demo.usad2 import FULL, Usad2Demo

    demo = Usad2Demo(tmp_path / "run", tmp_path / "results")
    demo.models.mkdir(parents=True)
    stages = {s.name: s for s in demo.stages()}
    for model in ("usad2_w10", "usad2_equal", "speech_teacher", "sound_teacher", "music_teacher"):
        for task in FULL.superb_steps:
            command = [str(a) for a in stages[f"superb-{task}-{model}"].command]
            assert command.count("--seed") == 1, (task, model)
        assert [str(a) for a in stages[f"hear-{model}"].command].count("--seed") == 1
