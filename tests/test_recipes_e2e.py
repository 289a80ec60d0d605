"""End to end: one SUPERB task (KS) and one HEAR task, two upstreams each, through the recipes
(s3prl's run_downstream, heareval's runners) into a rendered leaderboard; the `usad` commands
print a few lines and a score table (the tools' output is in the run's logs), and one checkpoint
is one model in both benchmarks."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from downstream_recipes.cli import main
from downstream_recipes.hear.runner import LOG, HearRun, run_hear
from downstream_recipes.superb.runner import SuperbRun, run_superb
from results.collect import collect
from results.items import hear_outcomes, superb_outcomes
from results.published import load_published
from results.render import render

SR = 16000
KEYWORDS = ("yes", "no", "up", "down")


def _tone(freq: float, seed: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(t.shape)
    return (0.3 * np.sin(2 * math.pi * freq * t) + 0.01 * noise).astype(np.float32)


def _speech_commands_split(name: str) -> float:
    """Speech Commands' own hash rule (s3prl applies it): < 10 -> validation."""
    digest = hashlib.sha1(name.encode()).hexdigest()
    return (int(digest, 16) % (2**27)) * (100.0 / (2**27 - 1))


def make_speech_commands(root: Path) -> Path:
    """A Speech Commands v0.01 layout: 4 keywords as tones, 4 training and 2 validation speakers."""
    train, valid, i = [], [], 0
    while len(train) < 4 or len(valid) < 2:
        name, i = f"{i:08x}", i + 1
        pct = _speech_commands_split(name)
        if pct < 10 and len(valid) < 2:
            valid.append(name)
        elif pct >= 20 and len(train) < 4:
            train.append(name)
    for s, speaker in enumerate(train + valid):
        for k, word in enumerate(KEYWORDS):
            (root / "speech_commands_v0.01" / word).mkdir(parents=True, exist_ok=True)
            sf.write(root / "speech_commands_v0.01" / word / f"{speaker}_nohash_0.wav", _tone(300 + 200 * k, s), SR)
    noise = root / "speech_commands_v0.01" / "_background_noise_"
    noise.mkdir()
    sf.write(noise / "noise.wav", 0.01 * np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32), SR)
    for k, word in enumerate(KEYWORDS):
        (root / "speech_commands_test_set_v0.01" / word).mkdir(parents=True)
        sf.write(root / "speech_commands_test_set_v0.01" / word / f"test{k}_nohash_0.wav", _tone(300 + 200 * k, 99), SR)
    return root


def make_hear_task(tasks: Path) -> None:
    """A HEAR scene task (hear-preprocess layout) with two tone labels and a one-point grid."""
    task = tasks / "tones-v1-full"
    labels = {"low": 300.0, "high": 1200.0}
    meta = {"task_name": "tones", "version": "1", "embedding_type": "scene", "prediction_type": "multiclass",
            "split_mode": "trainvaltest", "sample_duration": 1.0, "evaluation": ["top1_acc"],
            "splits": ["train", "valid", "test"],
            "evaluation_params": {"task_specific_param_grid": {
                "hidden_layers": [1], "hidden_dim": [16], "max_epochs": [2], "check_val_every_n_epoch": [1],
                "patience": [1], "batch_size": [64], "lr": [1e-3]}}}
    task.mkdir(parents=True)
    (task / "task_metadata.json").write_text(json.dumps(meta))
    with open(task / "labelvocabulary.csv", "w", newline="") as f:
        csv.writer(f).writerows([["idx", "label"], *enumerate(labels)])
    for s, split in enumerate(meta["splits"]):
        (task / str(SR) / split).mkdir(parents=True)
        items = {}
        for i in range(4):
            label = list(labels)[i % 2]
            sf.write(task / str(SR) / split / f"{i}.wav", _tone(labels[label], 10 * s + i), SR)
            items[f"{i}.wav"] = [label]
        (task / f"{split}.json").write_text(json.dumps(items))


# Another HEAR 2021 module, to show the runner takes any module: band energies of an FFT.
BANDS_MODULE = textwrap.dedent('''
    import torch

    class Bands(torch.nn.Module):
        sample_rate = 16000
        scene_embedding_size = 8
        timestamp_embedding_size = 8

    def load_model(model_file_path=""):
        return Bands()

    def get_timestamp_embeddings(audio, model):
        frames = audio.unfold(1, 400, 160)
        spec = torch.fft.rfft(frames, dim=-1).abs()[..., :200]
        emb = torch.log1p(spec.reshape(*spec.shape[:2], 8, 25).mean(-1))
        ts = (torch.arange(emb.shape[1]) * 10.0 + 12.5).expand(audio.shape[0], -1)
        return emb, ts

    def get_scene_embeddings(audio, model):
        return get_timestamp_embeddings(audio, model)[0].mean(1)
''')


@pytest.mark.timeout(600)
def test_superb_and_hear_into_a_leaderboard(tmp_path: Path, tiny_checkpoint: Path, capfd: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_speech_commands(tmp_path / "ks")
    runs = tmp_path / "runs"
    assert main(["superb", "run", "--task", "KS", "-u", "usad", "-k", str(tiny_checkpoint), "--data", str(data),
                 "--runs-dir", str(runs), "--steps", "2", "--workers", "0",
                 "-o", "config.downstream_expert.datarc.batch_size=4"]) == 0
    printed = capfd.readouterr().out
    assert len(printed.splitlines()) <= 6, printed  # stage lines, done, the table; s3prl's output is in the logs
    assert re.search(r"SUPERB\s+usad-tiny\s+KS\s+acc\s+[\d.]+\s+[\d.]+\s+done", printed), printed
    expdir = runs / "superb" / "KS" / "usad-tiny"
    assert "overall" in (expdir / "usad_train.log").read_text()
    assert (expdir / "usad_test.log").read_text().count("test acc:") == 1
    args = yaml.safe_load(next(expdir.glob("args_*.yaml")).read_text())
    assert args["seed"] == 1337  # s3prl's default seed, what run_downstream was given
    for seed in (5, 6):  # fbank with two seeds of its own (one run directory each)
        seeded = run_superb(SuperbRun(task="KS", upstream="fbank", data=data, runs_dir=runs, steps=2, workers=0,
                                      override="config.downstream_expert.datarc.batch_size=4", seed=seed))
        assert seeded.name == f"seed-{seed}" and (seeded / "usad_test.log").read_text().count("test acc:") == 1
        assert yaml.safe_load(next(seeded.glob("args_*.yaml")).read_text())["seed"] == seed

    make_hear_task(tmp_path / "tasks")
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "bands_module.py").write_text(BANDS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.setenv("PL_GLOBAL_SEED", "")  # set by the predictions runner; restored after the test
    capfd.readouterr()
    assert main(["hear", "run", "--module", "hear_api", "--model", str(tiny_checkpoint), "--tasks-dir", str(tmp_path / "tasks"),
                 "--runs-dir", str(runs), "--grid", "faster"]) == 0
    printed = capfd.readouterr().out
    assert len(printed.splitlines()) <= 6, printed
    assert re.search(r"HEAR\s+usad-tiny\s+tones-v1-full\s+top1_acc\s+[\d.]+\s+[\d.]+\s+done", printed), printed
    assert "Getting embeddings for split: test" in (runs / "hear" / "usad-tiny" / LOG).read_text()
    bands = run_hear(HearRun(module="bands_module", tasks_dir=tmp_path / "tasks", runs_dir=runs, grid="faster", seeds=(3, 4)))
    # one embedding pass, then each seed's predictions beside links to it
    assert (bands / "embeddings" / "bands_module" / "tones-v1-full" / ".done.embeddings").exists()
    assert not (bands / "embeddings" / "bands_module" / "tones-v1-full" / "test.predicted-scores.json").exists()
    for seed in (3, 4):
        seeded = bands / f"seed-{seed}" / "tones-v1-full"
        assert (seeded / "test.embeddings.npy").is_symlink() and (seeded / "test.predicted-scores.json").is_file()
    assert os.environ["PL_GLOBAL_SEED"] == "4"  # heareval's seed_everything(42) ran with the last seed

    measured = collect(runs)
    test = measured[measured["split"] == "test"]
    assert set(zip(test["benchmark"], test["model"], test["seed"])) == {
        ("SUPERB", "usad-tiny", 1337), ("SUPERB", "fbank", 5), ("SUPERB", "fbank", 6), ("HEAR", "usad-tiny", 42),
        ("HEAR", "bands_module", 3), ("HEAR", "bands_module", 4)}
    assert test["score"].notna().all() and ((test["score"] >= 0) & (test["score"] <= 100)).all()
    # each run's per-item predictions give back its logged score
    for row in test.itertuples(index=False):
        found = (superb_outcomes(Path(row.run_path), "KS") if row.benchmark == "SUPERB" else hear_outcomes(Path(row.run_path)))
        assert found is not None and found.score == pytest.approx(row.score, abs=1e-4), row
    usad_rows = measured[measured["model"] == "usad-tiny"]
    assert usad_rows["checkpoint_hash"].nunique() == 1  # one checkpoint, one model in both benchmarks
    # every number traced back to the file that produced it: s3prl's test-stage log and log.log,
    # heareval's test.predicted-scores.json, run by run
    dev = measured[measured["split"] == "dev"].set_index("run_path")["score"]
    traced: dict[tuple[str, str], list[float]] = {}
    for row in test.itertuples(index=False):
        where = Path(row.run_path)
        if row.benchmark == "SUPERB":
            (acc,) = re.findall(r"^test acc: ([0-9.]+)$", (where / "usad_test.log").read_text(), re.M)
            devs = [float(x) for x in re.findall(r"^dev at step \d+: ([0-9.]+)$", (where / "log.log").read_text(), re.M)]
            assert devs and dev[row.run_path] == pytest.approx(100 * max(devs), abs=1e-5)  # the dev row may come from float32 event files
            value = 100 * float(acc)
        else:
            value = 100 * json.loads((where / "test.predicted-scores.json").read_text())["test"]["test_top1_acc"]
        assert row.score == pytest.approx(value, abs=1e-9), row
        traced.setdefault((row.benchmark, row.model), []).append(value)
    mean = {key: sum(v) / len(v) for key, v in traced.items()}  # the boards show the mean over seeds
    paths = render(measured, load_published(), tmp_path / "board")
    table = pd.read_csv(paths["csv"])
    assert (table["source"] == "measured here").sum() == len(measured)
    summary = pd.read_csv(paths["summary"]).set_index(["benchmark", "model", "split"])
    fbank = summary.loc[("SUPERB", "fbank", "test")]
    # the four test clips have four speakers (test<k>_nohash_0.wav): no two items share a group
    assert fbank["seeds"] == "5 6" and fbank["resampled"] == "seeds x items" and fbank["low"] <= fbank["score"] <= fbank["high"]
    assert fbank["score"] == pytest.approx(test[(test["model"] == "fbank")]["score"].mean())
    assert summary.loc[("HEAR", "bands_module", "test")]["resampled"] == "seeds x items"
    md = paths["md"].read_text()
    for model in ("usad-tiny", "fbank", "bands_module", "USAD Base"):
        assert model in md
    # the SUPERB score, by hand: 1000 (s - s_fbank) / (s_sota - s_fbank) over KS, with the published
    # FBANK row and the best published KS accuracy, and once more against the fbank measured here
    reference = Path(__file__).resolve().parents[1] / "results" / "reference"
    board = pd.read_csv(reference / "superb_leaderboard.csv")
    paper = pd.read_csv(reference / "usad_paper_superb.csv")
    fbank_pub = float(board.loc[board["model"] == "FBANK", "KS_acc"].iloc[0])
    sota = max(board.loc[board["model"] != "FBANK", "KS_acc"].max(), paper["KS1_acc"].max())
    ks = {model: mean[("SUPERB", model)] for model in ("usad-tiny", "fbank")}
    for model in ks:
        cells = _md_row(md, model, "KS (ACC ↑)")
        assert cells["KS (ACC ↑)"].split(" [")[0] == f"{ks[model]:.2f}"
        assert cells["SUPERB score"] == f"{1000 * (ks[model] - fbank_pub) / (sota - fbank_pub):.1f} (1 tasks)"
        own = 1000 * (ks[model] - ks["fbank"]) / (sota - ks["fbank"])
        assert cells["SUPERB score vs measured fbank"] == f"{own:.1f} (1 tasks)"
    # the HEAR average of one local task is that task's score (several tasks: test_promises_hear.py)
    for model in ("usad-tiny", "bands_module"):
        cells = _md_row(md, model, "HEAR average")
        assert cells["tones-v1-full"].split(" [")[0] == f"{mean[('HEAR', model)]:.2f}"
        assert cells["HEAR average"] == f"{mean[('HEAR', model)]:.1f} (1 tasks, 0 official)"
    assert paths["png"].stat().st_size > 1000


def _md_row(md: str, model: str, column: str) -> dict[str, str]:
    """The cells of `model`'s row in the Markdown table that has `column`, by header."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        header = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and column in header:
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                if cells[0] == model:
                    return dict(zip(header, cells))
    raise AssertionError(f"no row {model!r} in a table with column {column!r}:\n{md}")
