"""SUPERB/HEAR recipes: overrides, data layouts, stage bookkeeping, s3prl fixes (fast tests)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from downstream_recipes.superb import recipes, runner
from downstream_recipes.superb.libriphone import LibriPhoneDataset, read_lexicon
from downstream_recipes.superb.s3prl_entry import DistributedSamplerWrapper
from results.manifest import read_manifest


def test_overrides_are_python_literals_for_s3prl() -> None:
    text = recipes.format_overrides({"config.a.path": Path("/d/x y"), "config.b": 3, "config.c": [Path("/l.txt")]})
    assert text == "config.a.path='/d/x y',,config.b=3,,config.c=['/l.txt']"
    # s3prl evaluates each value: a path that looks like arithmetic must stay a string.
    assert eval(recipes.format_overrides({"k": "1/2"}).split("=", 1)[1]) == "1/2"
    with pytest.raises(ValueError, match="cannot carry"):
        recipes.format_overrides({"k": Path("/a=b")})


def test_user_overrides_naming_keys_the_config_lacks_are_flagged() -> None:
    ks = recipes.get_recipe("ks")
    text = "config.optimizr.lr=5e-4,,config.optimizer.lr=1e-3,,config.runner.total_steps=5,,args.seed=3"
    assert recipes.unknown_config_keys(ks.config, text) == ["config.optimizr.lr"]
    assert recipes.unknown_config_keys(ks.config, "config.optimizer.lr.x=1") == ["config.optimizer.lr.x"]


def test_step_overrides_keep_two_dev_evaluations() -> None:
    ks = recipes.get_recipe("ks")
    assert recipes.step_overrides(ks, 120) == {"config.runner.total_steps": 120, "config.runner.eval_step": 30,
                                               "config.runner.save_step": 30, "config.runner.log_step": 12}
    assert recipes.step_overrides(ks, 2)["config.runner.eval_step"] == 1
    with pytest.raises(ValueError, match="--steps"):
        recipes.step_overrides(ks, 0)
    with pytest.raises(ValueError, match="unknown SUPERB task"):
        recipes.get_recipe("asr2")
    assert recipes.get_recipe("qbe").task == "QbE" and recipes.step_overrides(recipes.get_recipe("QBE"), 30) == {}


def test_every_recipe_config_parses_and_names_its_data_keys() -> None:
    import yaml

    for recipe in recipes.RECIPES.values():
        config = yaml.safe_load(recipe.config.read_text())
        assert not recipe.trains or config["runner"]["total_steps"] >= 30000, recipe.task
        node = config
        for part in recipe.workers_key.split(".")[1:]:
            node = node[part]
        assert isinstance(node, int), recipe.task


def test_data_layouts_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="KS training data not found; looked for .*speech_commands_v0.01"):
        recipes.RECIPES["KS"].data(tmp_path, tmp_path)
    (tmp_path / "speech_commands_v0.01").mkdir()
    (tmp_path / "speech_commands_test_set_v0.01").mkdir()
    got = recipes.RECIPES["KS"].data(tmp_path, tmp_path)
    assert got["config.downstream_expert.datarc.speech_commands_test_root"] == tmp_path / "speech_commands_test_set_v0.01"


def _librispeech(root: Path) -> None:
    for split in recipes.LIBRISPEECH_SPLITS.values():
        chapter = root / split / "19" / "198"
        chapter.mkdir(parents=True)
        (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO WORLD\n19-198-0001 HELLO\n")
        for utt in ("19-198-0000", "19-198-0001"):
            (chapter / f"{utt}.flac").write_bytes(b"")
    (root / "lexicon.txt").write_text("HELLO\tHH AH0 L OW1\nWORLD W ER1 L D\nHELLO HH EH0 L OW1\n")
    (root / "phoneme.txt").write_text("\n".join(["HH", "AH0", "EH0", "L", "OW1", "W", "ER1", "D"]) + "\n")


def test_pr_prepares_libriphone_csvs_and_dataset(tmp_path: Path) -> None:
    from s3prl.downstream.ctc.text import load_text_encoder

    _librispeech(tmp_path / "ls")
    values = recipes.RECIPES["PR"].data(tmp_path / "ls", tmp_path / "exp")
    csv_dir = values["config.downstream_expert.corpus.csv_dir"]
    assert sorted(p.name for p in csv_dir.iterdir()) == ["dev.csv", "test.csv", "train.csv"]
    tokenizer = load_text_encoder("word", str(tmp_path / "ls" / "phoneme.txt"))
    ds = LibriPhoneDataset("train.csv", tokenizer, 1, values["config.downstream_expert.corpus.lexicon"], str(csv_dir))
    wav, tokens = ds[0]  # longest first; the first pronunciation of HELLO wins
    assert wav.endswith("19-198-0000.flac")
    assert tokenizer.decode(tokens) == "HH AH0 L OW1 W ER1 L D"
    assert len(LibriPhoneDataset("train.csv", tokenizer, 4, values["config.downstream_expert.corpus.lexicon"],
                                 str(csv_dir))[0]) == 2
    (tmp_path / "bad.txt").write_text("HELLO XX\n")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        read_lexicon([str(tmp_path / "bad.txt")], {"HH"})


def test_distributed_sampler_wrapper_shards_the_draws() -> None:
    """Every rank draws the same weighted sample (same seed, as in DDP) and takes its own share of
    it: together the ranks see exactly that one draw, each position once."""
    weights = [1.0, 0.0, 2.0, 0.5, 1.0, 3.0, 0.0, 1.5, 1.0, 0.25]

    def sampler() -> torch.utils.data.WeightedRandomSampler:
        return torch.utils.data.WeightedRandomSampler(weights, 40, generator=torch.Generator().manual_seed(0))

    draws = list(sampler())
    for shuffle in (False, True):
        wrappers = [DistributedSamplerWrapper(sampler(), num_replicas=2, rank=r, shuffle=shuffle) for r in (0, 1)]
        for w in wrappers:
            w.set_epoch(3)
        parts = [list(w) for w in wrappers]
        assert len(parts[0]) == len(parts[1]) == 20 and parts[0] != parts[1]
        assert sorted(parts[0] + parts[1]) == sorted(draws)  # the one draw, shared out
        if not shuffle:  # DistributedSampler's own split: positions r, r + 2, ...
            assert parts == [draws[0::2], draws[1::2]]


def _fake_stream(calls: list[list[str]], expdir_files: dict[str, str]):  # type: ignore[no-untyped-def]
    """Stands in for the s3prl subprocess: records the command, writes what s3prl would."""

    def stream(cmd, log, env, echo=False):  # type: ignore[no-untyped-def]
        calls.append(list(cmd))
        expdir = log.parent
        for name, text in expdir_files.items():
            if name.startswith(cmd[cmd.index("-m", 3) + 1] + ":"):
                (expdir / name.split(":", 1)[1]).write_text(text)
        return 0

    return stream


def test_stages_skip_resume_and_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    (data / "speech_commands_v0.01").mkdir(parents=True)
    (data / "speech_commands_test_set_v0.01").mkdir()
    run = runner.SuperbRun(task="KS", upstream="fbank", data=data, runs_dir=tmp_path / "runs")
    calls: list[list[str]] = []
    # Training that saved states but never a dev-best (no dev improvement): the last state is used.
    monkeypatch.setattr(runner, "_stream", _fake_stream(calls, {
        "train:states-4.ckpt": "", "train:states-2.ckpt": "", "evaluate:usad_test.log": "test acc: 0.5\n"}))
    expdir = runner.run_superb(run)
    assert [c[c.index("-m", 3) + 1] for c in calls] == ["train", "evaluate"]
    assert "-e" not in calls[0] and calls[1][calls[1].index("-e") + 1].endswith("states-4.ckpt")
    manifest = read_manifest(expdir)
    assert manifest["stages"]["test"]["score"] == 50.0
    assert "no dev improvement" in manifest["stages"]["select"]["note"]
    # Rerun: every stage is done, nothing is launched.
    calls.clear()
    runner.run_superb(run)
    assert calls == []
    # Interrupted training: states exist, the stage is not done -> resume with -e EXPDIR.
    manifest["stages"] = {s: {"status": "pending"} for s in runner.STAGES}
    manifest["stages"]["train"]["status"] = "running"
    (expdir / "usad_run.json").write_text(json.dumps(manifest))
    runner.run_superb(run)
    assert calls[0][calls[0].index("-e") + 1] == str(expdir)
    # The same run name with another upstream is refused.
    with pytest.raises(ValueError, match=r"upstream .fbank. there, .mfcc. now\): pass --name NEW"):
        runner.run_superb(runner.SuperbRun(task="KS", upstream="mfcc", data=data, runs_dir=tmp_path / "runs",
                                           name="fbank"))


def test_feature_cache_budget_reaches_the_s3prl_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    (data / "speech_commands_v0.01").mkdir(parents=True)
    (data / "speech_commands_test_set_v0.01").mkdir()
    envs: list[dict[str, str]] = []
    monkeypatch.delenv("USAD_FEATURE_CACHE_MB", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")  # s3prl's runner would never stop: the child must not get it
    monkeypatch.setattr(runner, "_stream", lambda cmd, log, env, echo=False: envs.append(env) or 1)
    for budget in (0.0, 64.0):
        run = runner.SuperbRun(task="KS", upstream="fbank", data=data, runs_dir=tmp_path / f"runs{budget}",
                               feature_cache_mb=budget)
        with pytest.raises(runner.RecipeError):
            runner.run_superb(run)
    assert "USAD_FEATURE_CACHE_MB" not in envs[0] and envs[1]["USAD_FEATURE_CACHE_MB"] == "64.0"
    assert not any("TQDM_DISABLE" in env for env in envs)


def test_failed_stage_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    (data / "speech_commands_v0.01").mkdir(parents=True)
    (data / "speech_commands_test_set_v0.01").mkdir()
    monkeypatch.setattr(runner, "_stream", lambda cmd, log, env, echo=False: 1)
    run = runner.SuperbRun(task="KS", upstream="fbank", data=data, runs_dir=tmp_path / "runs")
    with pytest.raises(runner.RecipeError, match="train stage failed"):
        runner.run_superb(run)
    assert read_manifest(run.expdir)["stages"]["train"]["status"] == "failed"


def test_sigterm_stops_the_s3prl_child(tmp_path: Path) -> None:
    import os
    import signal
    import sys
    import threading

    pid_file = tmp_path / "child.pid"
    child = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"]
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        runner._stream(child, tmp_path / "log.txt", dict(os.environ))
    timer.cancel()
    child_pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # killed and reaped by _stream
            os.kill(child_pid, 0)
            threading.Event().wait(0.1)
    assert signal.getsignal(signal.SIGTERM) is not runner._raise_interrupt


def test_a_failed_stage_names_the_s3prl_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error says what went wrong (the exception that ended s3prl's traceback and where it was
    raised), not only where the log is; the manifest records the same line."""
    data = tmp_path / "SNIPS"
    data.mkdir()
    for name in ("slots.txt", "character.txt"):
        (data / name).write_text("O\n")
    # real lines of a failed SF run: s3prl's SNIPS parser found no audio for a speaker list
    traceback = (
        "checking files: 100%|##########| 12/12 [00:00<00:00]\rchecking files: 0it [00:00, ?it/s]\n"
        "Traceback (most recent call last):\n"
        '  File "/x/.venv/lib/python3.11/site-packages/s3prl/downstream/runner.py", line 191, in _get_downstream\n'
        "    model = Downstream(\n"
        '  File "/x/.venv/lib/python3.11/site-packages/s3prl/dataio/corpus/snips.py", line 111, in _collect_data\n'
        '    assert len(wav_list) > 0, "No data found @ {}".format(dataset_root / split)\n'
        "AssertionError: No data found @ /data/SNIPS/valid\n")

    def failing(cmd, log, env, echo=False):  # type: ignore[no-untyped-def]
        with log.open("a") as handle:
            handle.write(f"\n=== now $ {' '.join(cmd)}\nold noise\n" + traceback)
        return 1

    monkeypatch.setattr(runner, "_stream", failing)
    run = runner.SuperbRun(task="SF", upstream="fbank", data=data, runs_dir=tmp_path / "runs")
    expected = "AssertionError: No data found @ /data/SNIPS/valid (raised at s3prl/dataio/corpus/snips.py:111)"
    with pytest.raises(runner.RecipeError) as info:
        runner.run_superb(run)
    assert expected in str(info.value) and "usad_train.log" in str(info.value)
    assert expected in read_manifest(run.expdir)["stages"]["train"]["error"]
