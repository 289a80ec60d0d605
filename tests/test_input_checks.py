"""The mistakes a newcomer makes, each answered in one line (exit status 2) before s3prl or
heareval start, leaving no run directory: a typo in -u, an audio file or a distillation run
directory as the checkpoint, a missing HEAR module; a rerun with other weights names what
differs; too-short distillation audio names data.min_seconds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from downstream_recipes.cli import main
from downstream_recipes.superb import runner
from usad_upstream import build_model, save_checkpoint
from usad_upstream.distill.data import DataConfig, DistillData, ManifestEntry


@pytest.fixture()
def ks_data(tmp_path: Path) -> Path:
    data = tmp_path / "ks"
    (data / "speech_commands_v0.01").mkdir(parents=True)
    (data / "speech_commands_test_set_v0.01").mkdir()
    return data


@pytest.fixture()
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_upstream_typo_is_one_line_naming_the_close_name(tmp_path: Path, ks_data: Path, tiny_checkpoint: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    err = _one_line_error(capsys, ["superb", "run", "--task", "KS", "-u", "usadd", "-k", str(tiny_checkpoint),
                                   "--data", str(ks_data), "--runs-dir", str(runs)])
    assert "unknown s3prl upstream 'usadd'" in err and "did you mean 'usad'" in err
    assert not runs.exists()


@pytest.mark.parametrize("bad", ["audio", "run_dir", "missing"])
def test_wrong_checkpoint_is_one_line_before_s3prl(bad: str, tmp_path: Path, ks_data: Path, wav: Path,
                                                    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_stream", lambda *a, **k: pytest.fail("s3prl was started"))
    run_dir = tmp_path / "distill_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = {"audio": wav, "run_dir": run_dir, "missing": tmp_path / "none.safetensors"}[bad]
    runs = tmp_path / "runs"
    err = _one_line_error(capsys, ["superb", "run", "--task", "KS", "-u", "usad", "-k", str(ckpt), "--data", str(ks_data),
                                   "--runs-dir", str(runs)])
    expected = {"audio": "is an audio file (WAV), not a checkpoint", "run_dir": "run directory, not a checkpoint",
                "missing": "checkpoint not found"}[bad]
    assert expected in err
    if bad == "run_dir":
        assert f"usad export {run_dir} -o student.safetensors" in err
    assert not runs.exists()


def test_bad_pr_data_leaves_no_run_dir(tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PR's data step writes CSVs into the run directory before it finds the problem."""
    chapter = tmp_path / "ls" / "train-clean-100" / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO\n")  # no audio for it
    for split in ("dev-clean", "test-clean"):
        (tmp_path / "ls" / split).mkdir()
    (tmp_path / "ls" / "lexicon.txt").write_text("HELLO HH AH0 L OW1\n")
    (tmp_path / "ls" / "phoneme.txt").write_text("HH\nAH0\nL\nOW1\n")
    runs = tmp_path / "runs"
    err = _one_line_error(capsys, ["superb", "run", "--task", "PR", "-u", "usad", "-k", str(tiny_checkpoint),
                                   "--data", str(tmp_path / "ls"), "--runs-dir", str(runs)])
    assert "no audio file for utterance 19-198-0000" in err
    assert not (runs / "superb" / "PR").exists()


def _task(tasks: Path) -> None:
    (tasks / "toy").mkdir(parents=True)
    (tasks / "toy" / "task_metadata.json").write_text(json.dumps({"task_name": "toy", "evaluation": ["top1_acc"]}))


@pytest.mark.parametrize("argv,expected", [
    (["--model", "WAV"], "is an audio file (WAV), not a checkpoint"),
    (["--module", "no_such_hear_module"], "--module no_such_hear_module: cannot import it"),
    (["--module", "json"], "--module json: not a HEAR 2021 module (no load_model"),
])
def test_hear_run_checks_module_and_model_once(argv: list[str], expected: str, tmp_path: Path, wav: Path,
                                               capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import usad_upstream.hear as library_hear

    monkeypatch.setattr(library_hear, "run_embeddings_runner", lambda args: pytest.fail("heareval was started"))
    _task(tmp_path / "tasks")
    runs = tmp_path / "runs"
    argv = [str(wav) if a == "WAV" else a for a in argv]
    err = _one_line_error(capsys, ["hear", "run", *argv, "--tasks-dir", str(tmp_path / "tasks"), "--runs-dir", str(runs)])
    assert expected in err
    assert not runs.exists()


def _fake_s3prl(cmd: list[str], log: Path, env: dict, echo: bool = False) -> int:
    mode = cmd[cmd.index("-m", 3) + 1]
    (log.parent / ("states-2.ckpt" if mode == "train" else "usad_test.log")).write_text("test acc: 0.5\n")
    (log.parent / "args_0.yaml").write_text("upstream: usad\n")  # what marks an s3prl experiment
    return 0


def test_a_rerun_with_equal_weights_goes_on_and_other_weights_are_named(
        tmp_path: Path, ks_data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_stream", _fake_s3prl)
    torch.manual_seed(0)
    model = build_model("tiny", layers=1)
    first = save_checkpoint(model, tmp_path / "a" / "tiny.safetensors")
    again = save_checkpoint(model, tmp_path / "b" / "tiny.safetensors", extra={"note": "same weights, other bytes"})
    other = save_checkpoint(build_model("tiny", layers=1), tmp_path / "c" / "tiny.safetensors")
    argv = ["superb", "run", "--task", "KS", "-u", "usad", "--data", str(ks_data), "--runs-dir", str(tmp_path / "runs")]
    assert main([*argv, "-k", str(first)]) == 0
    out = capsys.readouterr().out
    assert "usad-tiny" in out and "50.00" in out  # the score table
    assert main([*argv, "-k", str(again)]) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, [*argv, "-k", str(other)])
    assert "holds another run (the weights differ" in err and str(first) in err and str(other) in err
    assert "pass --name NEW to keep both" in err


def test_too_short_audio_names_min_seconds() -> None:
    entries = [ManifestEntry(f"/clips/{i}.wav", 8000, 16000, "speech") for i in range(6)]  # 0.5 s each
    data = DistillData(entries, DataConfig(max_seconds=2.0, min_seconds=1.0), batch_seconds=8.0, seed=0)
    with pytest.raises(ValueError, match=r"6 of the 6 manifest files are shorter than data.min_seconds = 1.0 s.*"
                                         r"lower data.min_seconds"):
        next(iter(data))


def test_run_downstream_drop_in_names_a_typo_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "downstream_recipes" / "run_downstream.py"), "-m", "train", "-u", "usadd",
                           "-d", "example", "-c", str(repo / "downstream_recipes/superb/configs/example.yaml"),
                           "-p", str(tmp_path / "exp")], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: unknown s3prl upstream 'usadd'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "exp").exists()
