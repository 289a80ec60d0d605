"""X-ARES end to end: the corpora stage's WebDataset tasks read by xares's own loader, their
TaskConfigs, `usad xares run` through xares's own runner (resumable, quiet, one-line failures)
and the leaderboard's X-ARES rows traced back to xares's own score files.

The end-to-end run is the one test that runs xares.run for real: one process per task, each
importing xares (and transformers, which it imports) and encoding every clip; it runs the
speech task (clip level, MLP + kNN) and the frame-level event task of the `test` corpora, about
a minute on 2 quiet cores. The k-fold sound task and the music task go through the same runner
and are covered here up to their TaskConfigs and shards (together they would add two minutes).
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import soundfile
import torch

from downstream_recipes.cli import main
from downstream_recipes.corpora import build, sources
from downstream_recipes.xares import tasks as xtasks
from downstream_recipes.xares.runner import ENCODER_CLASS, last_error
from results.collect import collect
from results.published import load_published
from results.render import render
from results.tasks import XARES
from results.xares_scores import read_score, scores_dir

pytest.importorskip("xares.audio_encoder_checker", reason="the xares extra is not installed (make setup installs it)")
pytestmark = pytest.mark.skipif(
    bool(sources.missing_packages(sources.packages_for("test"))) and __import__("os").geteuid() != 0,
    reason="needs the corpora's Debian packages (or root to install them)")

DOMAINS = {"keywords": "speech", "sound_events": "sound", "instrument_family": "music", "event_detection": "sound"}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`usad corpora build --stage xares` at size test (it builds the HEAR stage it reads, too)."""
    out = tmp_path_factory.mktemp("corpora")
    build.build_corpora(out, size="test", seed=0, stages=["xares"])
    return out


def xares_loader_samples(pattern: str) -> list[tuple[torch.Tensor, dict, str]]:
    """Every sample of one split through xares's own raw-audio loader (after compat)."""
    from usad_upstream.compat import patch_xares

    patch_xares()
    from xares.audiowebdataset import create_rawaudio_webdataset

    loader = create_rawaudio_webdataset([pattern], target_sample_rate=16000, num_workers=0, batch_size=8)
    samples = []
    for (audio, lengths), metas, keys in loader:
        samples += [(audio[i, : lengths[i]], metas[i], keys[i]) for i in range(len(keys))]
    return samples


def test_each_hear_split_becomes_the_same_xares_split_read_by_xares(corpora: Path) -> None:
    hear_tasks, root = corpora / "hear" / "tasks", corpora / "xares"
    assert {json.loads((root / t / "task.json").read_text())["domain"] for t in DOMAINS} == {"speech", "sound", "music"}
    for name in DOMAINS:
        spec = xtasks.read_task(root / name)
        assert (root / name / "README.md").is_file()
        for split in spec["splits"]:
            hear_labels = json.loads((hear_tasks / name / f"{split}.json").read_text())
            samples = xares_loader_samples(xtasks.shard_pattern(root / name, split))
            assert sorted(key for _, _, key in samples) == sorted(Path(f).stem for f in hear_labels)  # same clips, no others
            assert spec["counts"][split] == len(samples)
            for audio, meta, key in samples[:3]:
                source = meta["source"].split("/")[-1]
                expected, _ = soundfile.read(hear_tasks / name / "16000" / split / source, dtype="float32")
                torch.testing.assert_close(audio, torch.from_numpy(expected))
                if spec["task_type"] == "clip":
                    assert [meta["label"]] == hear_labels[source]
                else:
                    assert [e["label"] for e in meta["events"]] == [e["label"] for e in hear_labels[source]]
                    assert meta["events"][0]["onset"] == pytest.approx(hear_labels[source][0]["start"] / 1000)
    assert build.build_corpora(corpora, size="test", seed=0, stages=["xares"])["xares"] == 0.0  # a rerun skips it


def test_task_configs_follow_task_json(corpora: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from xares.utils import attr_from_py_path

    class Hop40Encoder:
        hop_size_in_ms = 40.0

    monkeypatch.setenv(xtasks.TASK_ENV, str(corpora / "xares" / "sound_events"))
    monkeypatch.setenv(xtasks.ENV_ROOT_ENV, str(tmp_path / "env"))
    folds = attr_from_py_path("downstream_recipes/xares/tasks.py", endswith="_config")(None)  # how xares.run calls it
    assert (folds.name, folds.private, folds.zenodo_id, folds.env_root) == ("sound_events", True, None, str(tmp_path / "env"))
    assert folds.k_fold_splits == ["fold00", "fold01", "fold02", "fold03", "fold04"] and folds.do_knn
    assert all(list(Path(p).parent.glob(Path(p).name)) for p in folds.audio_tar_name_of_split.values())
    classes = json.loads((corpora / "xares" / "sound_events" / "task.json").read_text())["classes"]
    assert folds.output_dim == len(classes) and folds.label_processor({"label": classes[2]}) == 2

    events = xtasks.build_task(corpora / "xares" / "event_detection", Hop40Encoder(), tmp_path / "env")
    assert (events.task_type, events.criterion, events.do_knn, events.metric) == ("frame", "BCEWithLogitsLoss", False,
                                                                                  "segmentf1_macro")
    assert events.metric_args == {"hop_size_in_ms": 40.0, "segment_length_in_s": 1.0}
    target = events.label_processor({"events": [{"label": "drum", "onset": 0.5, "offset": 1.0}]})
    row = json.loads((corpora / "xares" / "event_detection" / "task.json").read_text())["classes"].index("drum")
    assert target.shape == (events.output_dim, 125)  # 5 s at 40 ms
    assert target[row].nonzero().flatten().tolist() == list(range(13, 25)) and target.sum() == 12

    broken = tmp_path / "broken"
    shutil.copytree(corpora / "xares" / "keywords", broken)
    (broken / "valid-000000.tar").unlink()
    with pytest.raises(ValueError, match="no WebDataset shard for split"):
        xtasks.build_task(broken, None, tmp_path / "env")
    monkeypatch.delenv(xtasks.TASK_ENV)
    with pytest.raises(ValueError, match=xtasks.TASK_ENV):
        xtasks.local_task_config(None)


def test_usad_xares_run_resumes_and_lands_in_the_leaderboard(corpora: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    args = ["xares", "run", "-k", str(tiny_checkpoint), "--tasks", str(corpora / "xares"), "--runs-dir", str(runs),
            "--task", "keywords", "--task", "event_detection"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(X-ARES)" not in out and "Epoch" not in out  # xares's own output is in the logs only
    run_dir = runs / "xares" / "usad-tiny"
    for name in ("keywords", "event_detection"):
        assert "Saved MLP score" in (run_dir / "logs" / f"{name}.log").read_text()
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert table["keywords"][0] == "accuracy" and table["keywords"][-1] == "done"
    assert table["event_detection"][:3] == ["segmentf1_macro", table["event_detection"][1], "n/a"]
    assert "weighted" in table

    logs = {p.name: p.stat().st_size for p in (run_dir / "logs").iterdir()}
    assert main(args) == 0  # finished tasks are not run again
    assert {p.name: p.stat().st_size for p in (run_dir / "logs").iterdir()} == logs
    assert "encoding and probing" not in capsys.readouterr().out

    measured = collect(runs)
    rows = measured[measured["benchmark"] == XARES]
    assert set(zip(rows["metric"], rows["status"])) == {("mlp_accuracy", "done"), ("knn_accuracy", "done"),
                                                        ("mlp_segmentf1_macro", "done")}
    for name, formal in (("keywords", "Keywords (local)"), ("event_detection", "Event detection (local)")):
        files = scores_dir(run_dir / "env", name, ENCODER_CLASS)
        for method in ("mlp", "knn") if name == "keywords" else ("mlp",):
            written = float((files / f"{method}_score.txt").read_text().split()[0])  # xares's own file
            row = rows[(rows["task"] == formal) & (rows["metric"].str.startswith(method))]
            assert row["score"].tolist() == [pytest.approx(100 * written)]
            assert row["model"].tolist() == ["usad-tiny"]
    paths = render(measured, load_published(which="none"), tmp_path / "board")
    board = paths["md"].read_text()
    assert "## X-ARES (MLP)" in board and "## X-ARES (kNN)" in board
    assert f"{100 * read_score(scores_dir(run_dir / 'env', 'keywords', ENCODER_CLASS), 'mlp').value:.2f}" in board
    assert pd.read_csv(paths["csv"])["benchmark"].eq(XARES).sum() == 3


def test_a_failed_task_is_one_line_naming_its_log(corpora: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    tasks = tmp_path / "tasks"
    shutil.copytree(corpora / "xares" / "keywords", tasks / "keywords")
    for shard in (tasks / "keywords").glob("*.tar"):
        shard.write_bytes(b"not a tar file" * 100)
    runs = tmp_path / "runs"
    assert main(["xares", "run", "-k", str(tiny_checkpoint), "--tasks", str(tasks), "--runs-dir", str(runs)]) == 2
    captured = capsys.readouterr()
    log = runs / "xares" / "usad-tiny" / "logs" / "keywords.log"
    failed = [line for line in captured.out.splitlines() if line.startswith("X-ARES keywords failed")]
    assert failed == [f"X-ARES keywords failed: {last_error(log)} (log: {log})"]
    assert "Empty dataloader" in failed[0]
    assert captured.err.strip() == f"usad xares: error: X-ARES tasks failed: keywords (logs in {log.parent})"
    manifest = json.loads((runs / "xares" / "usad-tiny" / "usad_run.json").read_text())
    assert manifest["tasks"]["keywords"]["status"] == "failed" and manifest["stages"]["run"]["status"] == "failed"
    encoded = runs / "xares" / "usad-tiny" / "env" / "keywords" / "embeddings" / ENCODER_CLASS
    assert not (encoded / xtasks.ENCODED_MARKER).exists()  # the next attempt encodes again
    rows = collect(runs)
    assert rows["status"].tolist() == ["failed", "failed"] and rows["score"].isna().all()


def test_clips_xares_cannot_decode_fail_the_task_instead_of_being_left_out(corpora: Path, tiny_checkpoint: Path,
                                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """xares skips an undecodable clip with a warning and scores the rest: that is no score."""
    task = shutil.copytree(corpora / "xares" / "event_detection", tmp_path / "tasks" / "event_detection")
    shard = task / "test-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(shard, "w") as tar:
        first_wav = next(m.name for m, _ in members if m.name.endswith(".wav"))
        for member, data in members:
            data = b"RIFF, but no audio" if member.name == first_wav else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    runs = tmp_path / "runs"
    assert main(["xares", "run", "-k", str(tiny_checkpoint), "--tasks", str(task), "--runs-dir", str(runs)]) == 2
    log = runs / "xares" / "usad-tiny" / "logs" / "event_detection.log"
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("X-ARES event_detection failed")]
    assert failed == [f"X-ARES event_detection failed: xares encoded only test 2 of 3 clips (the others failed to "
                      f"decode: see the warnings in the log) (log: {log})"]
    assert read_score(scores_dir(runs / "xares" / "usad-tiny" / "env", "event_detection", ENCODER_CLASS), "mlp") is None
    assert collect(runs)["status"].tolist() == ["failed"]


def test_a_checkpoint_that_is_not_there_fails_before_any_task(tmp_path: Path, corpora: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    assert main(["xares", "run", "-k", str(tmp_path / "missing.safetensors"), "--tasks", str(corpora / "xares"),
                 "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usad xares: error:") and "missing.safetensors" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
