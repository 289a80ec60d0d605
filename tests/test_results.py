"""results/: parsing the real output formats of s3prl and heareval, score formulas, rendering."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from results import heareval_scores, s3prl_logs
from results.collect import collect
from results.manifest import MANIFEST, run_status
from results.published import MEASURED, PUBLISHED, load_published, superb_baselines
from results.render import render
from results.scores import hear_average, superb_score
from results.tasks import hear_task_name


# ---------------------------------------------------------------- fixtures in the tools' formats
def write_classification_expdir(expdir: Path, dev: list[tuple[int, float]], test: list[tuple[int, float]],
                                upstream: str = "fbank", downstream: str = "speech_commands") -> None:
    """What s3prl's classification experts leave behind: args/config yaml and log.log."""
    expdir.mkdir(parents=True, exist_ok=True)
    (expdir / "args_2026-11-26-10-00-00.yaml").write_text(
        f"downstream: {downstream}\nupstream: {upstream}\nupstream_ckpt: null\nexpdir: {expdir}\nmode: train\n"
    )
    (expdir / "config_2026-11-26-10-00-00.yaml").write_text("runner:\n  total_steps: 40\n")
    best = 0.0
    lines = []
    for (step, d), (_, t) in zip(dev, test):
        lines.append(f"dev at step {step}: {d}")
        if d > best:
            best = d
            lines.append(f"New best on dev at step {step}: {d}")
        lines.append(f"test at step {step}: {t}")
    (expdir / "log.log").write_text("\n".join(lines) + "\n")


def write_hear_task(task_dir: Path, task_name: str, scores: "dict | None", evaluation: str = "top1_acc") -> None:
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "task_metadata.json").write_text(json.dumps({"task_name": task_name, "evaluation": [evaluation],
                                                             "embedding_type": "scene", "split_mode": "trainvaltest"}))
    (task_dir / "test.embedding-dimensions.json").write_text(json.dumps([10, 16]))
    (task_dir / ".done.embeddings").write_text("")
    if scores is not None:
        (task_dir / "test.predicted-scores.json").write_text(json.dumps(scores, indent=4))


def trainvaltest_scores(test: float, val: float) -> dict:
    """The shape heareval's predictions runner writes for a train/valid/test task."""
    return {
        "test": {"test_loss": 0.7, "test_score": test, "test_top1_acc": test, "validation_score": val, "epoch": 3,
                 "time_in_min": 0.1},
        "hparams": {"lr": 0.001}, "postprocessing": [], "score_mode": "max", "embedding_path": "x",
    }


def kfold_scores(tests: list[float], vals: list[float]) -> dict:
    out: dict = {f"fold{i:02d}": {"test_score": t, "test_top1_acc": t, "validation_score": v}
                 for i, (t, v) in enumerate(zip(tests, vals))}
    mean = sum(tests) / len(tests)
    out["aggregated_scores"] = {"test_score_mean": mean, "test_score_std": 0.0, "test_top1_acc_mean": mean}
    out.update({"hparams": {}, "postprocessing": [], "score_mode": "max", "embedding_path": "x"})
    return out


# ---------------------------------------------------------------- score formulas
def test_superb_score_hand_computed() -> None:
    # KS: (90-40)/(100-40) = 0.8333; PR (error rate): (80-10)/(80-0) = 0.875 -> 1000 * 1.7083 / 2
    s = superb_score({"KS": 90.0, "PR": 10.0}, {"KS": 40.0, "PR": 80.0}, {"KS": 100.0, "PR": 0.0})
    assert s.value == pytest.approx(854.1667, abs=1e-3)
    assert s.tasks == ("PR", "KS") and s.missing == ()
    # fbank scores 0, SOTA scores 1000; a task without a baseline is reported as missing.
    assert superb_score({"KS": 40.0}, {"KS": 40.0}, {"KS": 100.0}).value == 0.0
    partial = superb_score({"KS": 100.0, "SID": 50.0}, {"KS": 40.0}, {"KS": 100.0})
    assert partial.missing == ("SID",) and partial.value == 1000.0  # the mean is over the tasks it could score


def test_superb_score_reproduces_the_usad_paper() -> None:
    """Paper Table III frame-level scores (PR, ASR, SD) from the SUPERB leaderboard numbers."""
    fbank, sota = superb_baselines()
    assert fbank["PR"] == 82.01 and sota["PR"] == 3.06 and sota["ASR"] == 3.36
    wavlm = superb_score({"PR": 3.92, "ASR": 5.59, "SD": 3.50}, fbank, sota)
    dpwavlm = superb_score({"PR": 8.22, "ASR": 10.19, "SD": 5.53}, fbank, sota)
    assert round(wavlm.value, 1) == 946.1
    assert round(dpwavlm.value, 1) == 751.3


def test_superb_score_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="SOTA equals the fbank"):
        superb_score({"KS": 50.0}, {"KS": 40.0}, {"KS": 40.0})
    with pytest.raises(ValueError, match="unknown SUPERB task"):
        superb_score({"XX": 1.0}, {}, {}, tasks=("XX",))


def test_hear_average_hand_computed_and_paper() -> None:
    a = hear_average({"ESC-50": 80.0, "Gunshot": 90.0, "Beehive": math.nan})
    assert a.value == pytest.approx(85.0) and a.missing == ("Beehive",)
    pub = load_published()
    usad_base = pub[(pub["benchmark"] == "HEAR") & (pub["model"] == "USAD Base")]
    assert len(usad_base) == 19
    assert round(hear_average(dict(zip(usad_base["task"], usad_base["score"]))).value, 1) == 78.7


# ---------------------------------------------------------------- s3prl formats
def test_log_log_best_dev_and_test_at_that_step(tmp_path: Path) -> None:
    write_classification_expdir(tmp_path, dev=[(10, 0.5), (20, 0.75), (30, 0.7)], test=[(10, 0.4), (20, 0.6), (30, 0.9)])
    picked = s3prl_logs.select_scores(s3prl_logs.observations(tmp_path), "acc", higher_is_better=True)
    assert (picked.dev, picked.dev_step, picked.test) == (0.75, 20, 0.6)


def test_test_stage_log_wins_and_tqdm_noise_is_ignored(tmp_path: Path) -> None:
    write_classification_expdir(tmp_path, dev=[(10, 0.5)], test=[(10, 0.4)])
    (tmp_path / s3prl_logs.TEST_LOG).write_text(
        "[Runner] - Resume from x/dev-best.ckpt\rtest:  50%|#####     | 1/2\rtest: 100%|##########| 2/2\n"
        "test acc: 0.875\n"
    )
    picked = s3prl_logs.select_scores(s3prl_logs.observations(tmp_path), "acc", True)
    assert picked.test == 0.875 and picked.test_source == "test-stage"


def test_printed_lines_of_ctc_asr_diarization_and_sv(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text("dev loss: 3.2\ndev per: 0.61\ntest-clean wer: 0.25\nmode dev acc 0.8 der 0.31\n"
                   "sv-voxceleb1/test-EER: 0.12\ntrain per: 0.1\n")
    obs = {(o.split, o.metric): o.value for o in s3prl_logs.parse_stdout(log, "stdout")}
    assert obs == {("dev", "per"): 0.61, ("test", "wer"): 0.25, ("dev", "acc"): 0.8, ("dev", "der"): 0.31,
                   ("test", "eer"): 0.12}


def test_tensorboard_events_written_by_s3prl(tmp_path: Path) -> None:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step, per in ((100, 0.8), (200, 0.55), (300, 0.6)):
        writer.add_scalar("ctc-libriphone/dev-per", per, global_step=step)
        writer.add_scalar("ctc-libriphone/dev-loss", 3.0, global_step=step)
        writer.add_scalar("ctc-libriphone/train-per", 0.1, global_step=step)
    writer.close()
    obs = s3prl_logs.observations(tmp_path)
    assert {o.metric for o in obs} == {"per"}
    picked = s3prl_logs.select_scores(obs, "per", higher_is_better=False)
    assert picked.dev == pytest.approx(0.55) and picked.dev_step == 200 and picked.test is None


# ---------------------------------------------------------------- heareval formats
def test_heareval_trainvaltest_and_kfold(tmp_path: Path) -> None:
    write_hear_task(tmp_path / "speech_commands-v0.0.2-5h", "speech_commands", trainvaltest_scores(0.9, 0.8))
    r = heareval_scores.read_task_dir(tmp_path / "speech_commands-v0.0.2-5h")
    assert (r.task, r.metric, r.test, r.dev, r.status) == ("Speech Commands 5h", "top1_acc", 0.9, 0.8, "done")
    write_hear_task(tmp_path / "esc50-v2.0.0-full", "esc50", kfold_scores([0.6, 0.8], [0.5, 0.7]))
    r = heareval_scores.read_task_dir(tmp_path / "esc50-v2.0.0-full")
    assert (r.task, r.test, r.dev) == ("ESC-50", pytest.approx(0.7), pytest.approx(0.6))
    write_hear_task(tmp_path / "mytask", "mytask", None)
    r = heareval_scores.read_task_dir(tmp_path / "mytask")
    assert (r.task, r.test, r.status) == ("mytask", None, "no predictions")
    (tmp_path / "mytask" / "test.predicted-scores.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        heareval_scores.read_task_dir(tmp_path / "mytask")


def test_hear_task_names() -> None:
    assert hear_task_name("nsynth_pitch-v2.2.3-50h", "nsynth_pitch") == "NSynth Pitch 50h"
    assert hear_task_name("speech_commands-v0.0.2-full", "speech_commands") == "Speech Commands full"
    assert hear_task_name("beehive_states_fold0-v2-full", "beehive_states_fold0") == "Beehive"
    assert hear_task_name("local-scenes", "local_scenes") == "local-scenes"


# ---------------------------------------------------------------- collect + render
def _manifest(path: Path, data: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).write_text(json.dumps(data))


def test_collect_and_render_with_partial_results(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # A finished SUPERB run of our recipe, a hand-run fbank baseline, and a crashed PR run.
    ks = runs / "superb" / "KS" / "usad-tiny"
    write_classification_expdir(ks, dev=[(10, 0.5), (20, 0.7)], test=[(10, 0.4), (20, 0.6)], upstream="usad")
    (ks / s3prl_logs.TEST_LOG).write_text("test acc: 0.65\n")
    _manifest(ks, {"benchmark": "SUPERB", "task": "KS", "model": "usad-tiny", "checkpoint_hash": "abc123def456",
                   "updated": "2026-11-26T10:00:00+00:00",
                   "stages": {"train": {"status": "done"}, "select": {"status": "done"}, "test": {"status": "done"}}})
    write_classification_expdir(runs / "by-hand" / "ks-fbank", dev=[(10, 0.3)], test=[(10, 0.25)])
    pr = runs / "superb" / "PR" / "usad-tiny"
    pr.mkdir(parents=True)
    (pr / "args_2026-11-26-11-00-00.yaml").write_text("downstream: ctc\nupstream: usad\n")
    (pr / s3prl_logs.TRAIN_LOG).write_text("dev per: 0.9\nTraceback (most recent call last):\nRuntimeError: boom\n")
    _manifest(pr, {"benchmark": "SUPERB", "task": "PR", "model": "usad-tiny", "checkpoint_hash": "abc123def456",
                   "stages": {"train": {"status": "failed", "error": "exit 1"}, "select": {"status": "pending"},
                              "test": {"status": "pending"}}})
    # A HEAR recipe run: one task done, one still without predictions, one not reached.
    hear = runs / "hear" / "usad-tiny"
    emb = hear / "embeddings" / "hear_api"
    write_hear_task(emb / "speech_commands-v0.0.2-5h", "speech_commands", trainvaltest_scores(0.42, 0.4))
    write_hear_task(emb / "esc50-v2.0.0-full", "esc50", None)
    _manifest(hear, {"benchmark": "HEAR", "model": "usad-tiny", "checkpoint_hash": "abc123def456",
                     "embeddings_dir": "embeddings/hear_api", "owner": {"host": "elsewhere", "pid": 1},
                     "stages": {"embed": {"status": "done"}, "predict": {"status": "running"}},
                     "tasks": {"speech_commands-v0.0.2-5h": {"status": "done"},
                               "esc50-v2.0.0-full": {"status": "running"},
                               "gunshot_triangulation-v1.0-full": {"status": "pending",
                                                                   "task_name": "gunshot_triangulation"}}})
    df = collect(runs)
    got = {(r.model, r.task, r.split): (r.score, r.status) for r in df.itertuples()}
    assert got[("usad-tiny", "KS", "dev")] == (pytest.approx(70.0), "done")
    assert got[("usad-tiny", "KS", "test")] == (pytest.approx(65.0), "done")
    assert got[("fbank", "KS", "test")] == (pytest.approx(25.0), "done")
    assert got[("usad-tiny", "PR", "dev")] == (pytest.approx(90.0), "failed")
    assert math.isnan(got[("usad-tiny", "PR", "test")][0]) and got[("usad-tiny", "PR", "test")][1] == "failed"
    assert got[("usad-tiny", "Speech Commands 5h", "test")] == (pytest.approx(42.0), "done")
    assert got[("usad-tiny", "ESC-50", "test")][1] == "running"
    assert got[("usad-tiny", "Gunshot", "test")][1] == "running"

    paths = render(df, load_published(), tmp_path / "out")
    table = pd.read_csv(paths["csv"])
    assert list(table.columns[:9]) == ["model", "checkpoint_hash", "benchmark", "task", "metric", "split", "score",
                                       "run_id", "date"]
    assert set(table["source"]) == {MEASURED, PUBLISHED}
    md = paths["md"].read_text()
    assert "— failed" in md and "— running" in md and "measured here" in md and "published (" in md
    assert "SUPERB score vs measured fbank" in md
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and "<script" not in page and 'src="http' not in page
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_status_detects_a_killed_run() -> None:
    stages = {"train": {"status": "running"}}
    import socket

    dead = {"stages": stages, "owner": {"host": socket.gethostname(), "pid": 2 ** 22 + 12345}}
    alive = {"stages": stages, "owner": {"host": socket.gethostname(), "pid": os.getpid()}}
    assert run_status(dead) == "interrupted" and run_status(alive) == "running"
    assert run_status(None) == "unknown"


def test_leaderboard_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from downstream_recipes.cli import main

    write_classification_expdir(tmp_path / "runs" / "ks-fbank", dev=[(10, 0.3)], test=[(10, 0.25)])
    assert main(["leaderboard", str(tmp_path / "runs"), "-o", str(tmp_path / "out"), "--published", "none"]) == 0
    assert "2 measured rows (0 gaps)" in capsys.readouterr().out
    assert "| fbank | measured here |" in (tmp_path / "out" / "leaderboard.md").read_text()
    assert main(["leaderboard", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    assert "runs directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", str(tmp_path / "empty"), "-o", str(tmp_path / "out2")]) == 0  # published rows only
    assert "warning: no SUPERB or HEAR runs" in capsys.readouterr().err


def test_failure_line_of_the_last_command(tmp_path: Path) -> None:
    log = tmp_path / "usad_train.log"
    log.write_text("\n=== t0 $ first\nTraceback (most recent call last):\nKeyError: 'old failure'\n"
                   "\n=== t1 $ second\n[usad-run-downstream] - CUDA is not available\n"
                   "usad-run-downstream: error: upstream checkpoint not found: /x.safetensors\n")
    assert s3prl_logs.failure_line(log) == "usad-run-downstream: error: upstream checkpoint not found: /x.safetensors"
    log.write_text("\n=== t1 $ cmd\n  File \"/v/lib/python3.11/site-packages/torch/cuda/__init__.py\", line 9, in _lazy_init\n"
                   "Traceback (most recent call last):\n"
                   "  File \"/v/lib/python3.11/site-packages/s3prl/downstream/sv_voxceleb1/expert.py\", line 245, in forward\n"
                   "    agg_vec = self.model(features_pad, attention_mask_pad.cuda())\n"
                   "AssertionError: Torch not compiled with CUDA enabled\n")
    assert s3prl_logs.failure_line(log) == ("AssertionError: Torch not compiled with CUDA enabled "
                                            "(raised at s3prl/downstream/sv_voxceleb1/expert.py:245)")
    log.write_text("\n=== t1 $ cmd\nsome output\nKilled\n")
    assert s3prl_logs.failure_line(log) == "Killed"
    assert "no log" in s3prl_logs.failure_line(tmp_path / "missing.log")


# What each new task's s3prl expert (and the QbE scorer) printed in real runs on the local
# corpora (tiny random USAD, --steps 2-4): usad_train.log holds the dev evaluations, usad_test.log
# the test stage's. \r-joined tqdm bars are part of the real logs.
REAL_LOGS = {
    "ER": ("dev acc: 0.2857142984867096\ndev acc: 0.4285714328289032\ndev acc: 0.1428571492433548\n",
           "[Expert] - using the testing fold: \"fold1\".\ntest acc: 0.25\n"),
    "ASR": ("dev-clean loss: 5.586225986480713\ndev-clean uer: 100.0\ndev-clean wer: 100.0\n",
            "test-clean: 100%|##| 3/3 [00:01<00:00]\rtest-clean loss: 7.296854496002197\ntest-clean uer: 100.0\n"
            "test-clean wer: 98.5\n"),
    "SD": ("mode dev acc 0.6055302619934082 der 0.5348979830741882\nmode dev acc 0.6037871837615967 der 0.5300425291061401\n",
           "2  recordings\nmode test acc 0.6442240476608276 der 0.5405057668685913\n"),
    "SF": ("dev slot_type_f1: 0.25\ndev slot_value_cer: 0.9\ndev slot_type_f1: 0.5\ndev slot_value_cer: 0.95\n",
           "test loss: 7.066385269165039\ntest slot_type_f1: 0.375\ntest slot_value_cer: 0.875\ntest slot_value_wer: 1.0\n"
           "test slot_edit_f1_full: 0.0\ntest wer: 1.0\ntest cer: 1.0\n"),
    "ASV": ("sv-voxceleb1/train-loss: 12.5\n", "sv-voxceleb1/test-EER: 0.3125\nsv-voxceleb1/test-EER: 0.25\n"),
    "QbE": ("[QbE] layer 0 of 2:\ndev mtwv: 0.05\ndev atwv: -1.2\n[QbE] layer 1 of 2:\ndev mtwv: 0.2026190476\n",
            "[QbE] layer 1 (best on dev):\ntest mtwv: 0.125\ntest atwv: -0.59\ntest min_cnxe: 0.93\n"),
}


def test_leaderboard_reads_each_new_tasks_real_metric(tmp_path: Path) -> None:
    from results.manifest import write_manifest

    for task, (train_log, test_log) in REAL_LOGS.items():
        expdir = tmp_path / "superb" / task / "usad-tiny"
        expdir.mkdir(parents=True)
        (expdir / "args_2026-12-01-23-00-00.yaml").write_text("upstream: usad\n")
        (expdir / s3prl_logs.TRAIN_LOG).write_text(train_log)
        (expdir / s3prl_logs.TEST_LOG).write_text(test_log)
        write_manifest(expdir, {"benchmark": "SUPERB", "task": task, "model": "usad-tiny", "checkpoint_hash": "abc",
                                "stages": {s: {"status": "done"} for s in ("train", "select", "test")}})
    df = collect(tmp_path).set_index(["task", "metric", "split"])["score"]
    expected = {("ER", "acc", "test"): 25.0, ("ER", "acc", "dev"): 42.857143, ("ASR", "wer", "test"): 98.5,
                ("ASR", "wer", "dev"): 100.0, ("SD", "der", "test"): 54.050577, ("SD", "der", "dev"): 53.004253,
                ("SF", "slot_type_f1", "test"): 37.5, ("SF", "slot_type_f1", "dev"): 50.0,
                ("SF", "slot_value_cer", "test"): 87.5, ("ASV", "eer", "test"): 25.0,
                ("QbE", "mtwv", "test"): 0.125, ("QbE", "mtwv", "dev"): 0.2026190476}
    for key, value in expected.items():
        assert df[key] == pytest.approx(value, abs=1e-5), key
    assert ("ASV", "eer", "dev") not in df.index  # ASV has no dev selection: not a gap
    md = render(collect(tmp_path), load_published(), tmp_path / "board")["md"].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| usad-tiny | measured here"))
    assert "(6 tasks)" in row and "| 0.1250 |" in row  # the SUPERB score covers the six tasks; MTWV as is


def test_secondary_metric_is_read_at_the_primary_metrics_best_dev_step(tmp_path: Path) -> None:
    from tensorboardX import SummaryWriter

    from results.manifest import write_manifest

    expdir = tmp_path / "superb" / "SF" / "m"
    writer = SummaryWriter(str(expdir))  # what s3prl's ctc expert logs during training
    for step, f1, cer in ((10, 0.2, 0.5), (20, 0.6, 0.7), (30, 0.4, 0.9)):
        writer.add_scalar("ctc-snips/dev-slot_type_f1", f1, global_step=step)
        writer.add_scalar("ctc-snips/dev-slot_value_cer", cer, global_step=step)
    writer.close()
    (expdir / "args_2026-12-01-23-00-00.yaml").write_text("upstream: usad\n")
    (expdir / s3prl_logs.TEST_LOG).write_text("test slot_type_f1: 0.5\ntest slot_value_cer: 0.8\n")
    write_manifest(expdir, {"benchmark": "SUPERB", "task": "SF", "model": "m", "checkpoint_hash": "",
                            "stages": {s: {"status": "done"} for s in ("train", "select", "test")}})
    df = collect(tmp_path).set_index(["metric", "split"])["score"]
    assert df[("slot_type_f1", "dev")] == pytest.approx(60.0)
    assert df[("slot_value_cer", "dev")] == pytest.approx(70.0)  # step 20's, not the lowest (50 at step 10)
    assert df[("slot_value_cer", "test")] == pytest.approx(80.0)


def test_a_teacher_spec_is_hashed_with_the_weights_it_names(tmp_path: Path) -> None:
    from results.manifest import checkpoint_hash

    for name, content in (("a.ckpt", b"weights A"), ("b.ckpt", b"weights B")):
        (tmp_path / name).write_bytes(content)
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "a.ckpt").write_bytes(b"weights A")
    spec = lambda path: f"teachers:\n- kind: atst_frame\n  path: {path}\n"  # noqa: E731
    for name, path in (("a.yaml", tmp_path / "a.ckpt"), ("b.yaml", tmp_path / "b.ckpt"), ("moved.yaml", tmp_path / "moved" / "a.ckpt")):
        (tmp_path / name).write_text(spec(path))
    a, b, moved = (checkpoint_hash(tmp_path / n) for n in ("a.yaml", "b.yaml", "moved.yaml"))
    assert a != b  # same spec text but for the path, other weights: another model
    assert a == moved and len(a) == 12  # the same weights elsewhere: the same model
    (tmp_path / "a.ckpt").write_bytes(b"weights A, retrained")
    assert checkpoint_hash(tmp_path / "a.yaml") != a  # retrained behind an unchanged spec
