"""Probe seeds: where each seed's run goes and that heareval's fixed seed is replaced."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from downstream_recipes.hear.runner import HearRun, heareval_seed
from downstream_recipes.superb.runner import SuperbRun


def test_heareval_runs_with_the_given_seed_and_its_own_afterwards() -> None:
    from heareval.predictions import task_predictions

    fixed = task_predictions.seed_everything
    with heareval_seed(7):
        task_predictions.seed_everything(42, workers=False)  # what heareval calls
        drawn = random.random()
    random.seed(7)
    assert drawn == random.random()
    assert task_predictions.seed_everything is fixed
    with heareval_seed(None):  # no seed: heareval's own 42
        assert task_predictions.seed_everything is fixed


def test_each_seed_has_its_own_run_directory(tmp_path: Path) -> None:
    run = SuperbRun(task="KS", upstream="fbank", data=tmp_path, runs_dir=tmp_path / "runs", name="fbank")
    assert run.expdir == (tmp_path / "runs" / "superb" / "KS" / "fbank").resolve()
    assert SuperbRun(task="KS", upstream="fbank", data=tmp_path, runs_dir=tmp_path / "runs", name="fbank", seed=3).expdir == \
        (tmp_path / "runs" / "superb" / "KS" / "fbank" / "seed-3").resolve()
    hear = HearRun(module="hear_api", tasks_dir=tmp_path, runs_dir=tmp_path / "runs", name="m", seeds=(42, 43))
    assert hear.predictions_dir("keywords", 43) == hear.run_dir / "seed-43" / "keywords"
    assert hear.predictions_dir("keywords", None) == hear.run_dir / "embeddings" / "hear_api" / "keywords"


def test_the_cli_runs_one_probe_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from downstream_recipes import cli
    from downstream_recipes.superb import runner

    seen: list = []
    monkeypatch.setattr(runner, "run_superb", lambda run: seen.append(run.seed) or run.expdir)
    assert cli.main(["superb", "run", "--task", "KS", "-u", "fbank", "--data", str(tmp_path), "--seed", "5", "--seed", "6"]) == 0
    assert seen == [5, 6]
    assert cli.main(["superb", "run", "--task", "KS", "-u", "fbank", "--data", str(tmp_path)]) == 0
    assert seen[-1] is None
