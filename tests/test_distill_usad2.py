"""USAD 2.0 distillation through the real trainer: three teachers (speech, sound, music) into a
25 Hz student with domain-aware weighting, per-domain metrics, exact stop/resume, and a second
stage initialised from the first with last-layer targets."""
from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conftest import config_for
from usad_upstream import build_model, save_checkpoint
from usad_upstream.distill.data import DOMAINS, DataConfig, DistillData, build_manifest, write_manifest
from usad_upstream.distill.trainer import build_teachers, student_frames, teacher_specs, train
from usad_upstream.distill.objective import DistillObjective
from usad_upstream.teachers.fixtures import write_atst_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("usad2_distill")
    rng = np.random.default_rng(0)
    entries = []
    for d, domain in enumerate(DOMAINS):
        folder = root / domain
        folder.mkdir()
        for i in range(4):
            sr = (16000, 22050)[i % 2]
            t = np.arange(int((0.8 + 0.15 * i) * sr)) / sr
            x = 0.3 * np.sin(2 * np.pi * (120 + 200 * d + 30 * i) * t) + 0.02 * rng.standard_normal(t.shape)
            sf.write(folder / f"{domain}{i}.wav", x.astype(np.float32), sr)
        entries += build_manifest([folder], domain)[0]
    write_manifest(entries, root / "manifest.tsv")
    torch.manual_seed(1)
    save_checkpoint(build_model("tiny", layers=2, dim=64, heads=2), root / "speech.safetensors")  # 50 Hz
    torch.manual_seed(2)
    save_checkpoint(build_model("tiny", layers=3, dim=64, heads=2, frame_rate=25), root / "music.safetensors")  # 25 Hz
    write_atst_checkpoint(root / "sound.ckpt", dim=64, depth=2, mlp_hidden=64)  # 25 Hz
    base = {
        "run_dir": str(root / "run"),
        "model": {"size": "tiny", "layers": 2, "dim": 64, "heads": 2, "dropout": 0.1, "frame_rate": 25},
        "teachers": {
            "speech": {"kind": "usad", "path": str(root / "speech.safetensors"), "domain": "speech"},
            "sound": {"kind": "atst_frame", "path": str(root / "sound.ckpt"), "domain": "sound"},
            "music": {"kind": "usad", "path": str(root / "music.safetensors"), "domain": "music", "layers": [1, 3]},
        },
        "objective": {"num_layers": 2, "head_hidden": 32, "domain_omega": 10},
        "data": {"manifests": [str(root / "manifest.tsv")], "max_seconds": 1.5, "min_seconds": 0.5},
        "train": {"lr": 2e-3, "warmup_steps": 1, "max_steps": 4, "batch_seconds": 6.0, "log_every": 1,
                  "ckpt_every": 1, "device": "cpu"},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    return root


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as handle:
        return {int(r["step"]): {k: float(v) for k, v in r.items() if k.startswith("loss")} for r in csv.DictReader(handle)}


def read_entries(config):
    from usad_upstream.distill.data import Manifest, read_manifest

    return Manifest.concat([read_manifest(m) for m in config["data"]["manifests"]])


def same(a: float, b: float, tol: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


@pytest.fixture(scope="module")
def full_run(setup):
    """An uninterrupted 4-step run (real teacher kinds: build_teacher never sees domain / layers)."""
    full = config_for(setup, "full")
    train(full, progress=False)
    return full


def test_three_teachers_stop_and_resume_equal_an_uninterrupted_run(setup, full_run):
    full = full_run
    cut = config_for(setup, "cut", "train.stop_after=2")
    train(cut, progress=False)
    os.remove(os.path.join(cut["run_dir"], "checkpoints", "step_00000002.pt"))  # killed before step 2 was saved
    train(config_for(setup, "cut"), progress=False)
    a, b = rows(full["run_dir"]), rows(cut["run_dir"])
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    columns = {f"loss/{t}/{d}" for t in ("speech", "sound", "music") for d in DOMAINS}
    assert columns <= set(a[1]) and {"loss/music/L1", "loss/music/L3", "loss/sound/L1", "loss/sound/L2"} <= set(a[1])
    for step in (2, 3, 4):
        for key, value in a[step].items():
            assert same(b[step][key], value, 1e-6), (step, key, value, b[step][key])
    assert a[4]["loss"] < a[1]["loss"]


def test_per_domain_losses_are_each_teachers_frame_means_over_that_domains_clips(setup, full_run):
    """Replays step 1's micro-batches: the frame-weighted mean of loss/<t>/<domain> over the domains
    must be the teacher's mean head loss, and the logged total the domain-weighted sum (w = 10 over
    3 teachers: 10/12 for the clip's own teacher, 1/12 for the others), with frame counts taken from
    the clips' domains (read from the folder each file was written in)."""
    config = full_run
    row = rows(config["run_dir"])[1]
    teachers = build_teachers(config["teachers"])
    specs = teacher_specs(config, teachers)
    objective = DistillObjective(64, 2, specs, 2, 32, 25.0, 10)
    data = DistillData(read_entries(config), DataConfig.from_dict(config["data"]), 6.0, 0)
    frames = {(t, d): 0 for t in teachers for d in DOMAINS}
    for micro in next(iter(data)):
        student = student_frames(micro["lens"], 4)
        for name, teacher in teachers.items():
            valid = objective.valid_lengths(name, student, objective.targets_from(name, teacher(micro["wavs"], micro["lens"])))
            for n, d, crop in zip(valid.tolist(), micro["domains"].tolist(), micro["crops"]):
                assert f"/{DOMAINS[d]}/" in data.planner.entries.path(crop.index)
                frames[(name, DOMAINS[d])] += n
    assert len({d for (_, d), n in frames.items() if n}) >= 2  # the step mixes domains
    for name in teachers:
        heads = [v for k, v in row.items() if k.startswith(f"loss/{name}/L")]
        total = sum(frames[(name, d)] for d in DOMAINS)
        mixed = sum(frames[(name, d)] * row[f"loss/{name}/{d}"] for d in DOMAINS if frames[(name, d)]) / total
        assert abs(mixed - sum(heads) / len(heads)) <= 1e-5, name
        for d in DOMAINS:
            assert math.isnan(row[f"loss/{name}/{d}"]) == (frames[(name, d)] == 0)
    totals = {name: sum(frames[(name, d)] for d in DOMAINS) for name in teachers}
    # each teacher is named after its domain: 10/12 on its own domain's clips, 1/12 on the others
    weighted = sum((10 if name == d else 1) / 12 * frames[(name, d)] * row[f"loss/{name}/{d}"] / totals[name]
                   for name in teachers for d in DOMAINS if frames[(name, d)])
    assert abs(weighted - row["loss"]) <= 1e-5 * row["loss"]


def test_stage_two_starts_from_the_stage_one_student_with_last_layer_targets(setup, full_run):
    stage1 = setup / "full"
    stage2 = config_for(
        setup, "stage2", f"train.init_from={stage1}", "objective.domain_omega=null", "train.lr=1e-12", "train.max_steps=1", "train.warmup_steps=0",
        f"teachers={{whisper: {{kind: usad, path: {setup / 'speech.safetensors'}, layers: last}}, "
        f"af_whisper: {{kind: usad, path: {setup / 'music.safetensors'}, layers: last}}}}",
    )
    train(stage2, progress=False)
    source = torch.load(stage1 / "checkpoints" / "step_00000004.pt", weights_only=False)["student"]
    state = torch.load(setup / "stage2" / "checkpoints" / "step_00000001.pt", weights_only=False)
    for key, value in source.items():  # one step at lr 1e-12 leaves the initial weights in place
        torch.testing.assert_close(state["student"][key], value, atol=1e-6, rtol=0)
    assert sorted(state["heads"]) == sorted(
        ["heads.whisper.2.0.weight", "heads.whisper.2.0.bias", "heads.whisper.2.2.weight", "heads.whisper.2.2.bias",
         "heads.af_whisper.3.0.weight", "heads.af_whisper.3.0.bias", "heads.af_whisper.3.2.weight", "heads.af_whisper.3.2.bias"])
    assert {k for k in rows(stage2["run_dir"])[1] if "/L" in k} == {"loss/whisper/L2", "loss/af_whisper/L3"}
    other = config_for(setup, "stage2_bad", f"train.init_from={stage1}", "model.frame_rate=50")
    with pytest.raises(ValueError, match="another architecture.*frame_rate: config 50, checkpoint 25"):
        train(other, progress=False)


@pytest.mark.parametrize("override, match", [
    ("teachers.speech.domain=noise", "teachers.speech.domain must be one of"),
    ("objective.domain_omega=-1", "domain_omega must be null"),
    ("teachers.music.layers=[0]", "teachers.music.layers"),
    ("train.init_from=3", "init_from must be null or a checkpoint path"),
])
def test_config_errors_name_the_field(setup, override, match):
    with pytest.raises(ValueError, match=match):
        config_for(setup, "bad", override)
    with pytest.raises(ValueError, match="no teacher has a domain"):
        config_for(setup, "bad", "teachers.speech.domain=null", "teachers.sound.domain=null", "teachers.music.domain=null")
