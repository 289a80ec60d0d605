"""What README's Distillation section promises about `usad distill`, through the public trainer API
(`train(config)`, the run directory it writes): train.keep_last pruning and resuming from the
newest of several checkpoints; SIGTERM then the same command giving the losses of an uninterrupted
run; resuming with another process count (world_size x grad_accum equal); and the optimizer
settings (AdamW betas / eps / weight decay not on biases and norms, linear warmup then linear
decay, gradient clipping), recomputed from the checkpoints the run wrote."""
from __future__ import annotations

import csv
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conftest import config_for
from usad_upstream import build_model, save_checkpoint
from usad_upstream.distill.config import load_config
from usad_upstream.distill.data import build_manifest, write_manifest
from usad_upstream.distill.trainer import train
from usad_upstream.teachers import build_teacher
from usad_upstream.teachers.base import Teacher, TeacherOutput


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten clips (16 and 22.05 kHz), one tiny USAD teacher, a base config of 5 steps."""
    root = tmp_path_factory.mktemp("promises_trainer")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        sr = (16000, 22050)[i % 2]
        t = np.arange(int((1.0 + 0.1 * i) * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.02 * rng.standard_normal(t.shape)
        sf.write(root / "audio" / f"clip{i}.wav", x.astype(np.float32), sr)
    entries, _ = build_manifest([root / "audio"], "speech")
    write_manifest(entries, root / "manifest.tsv")
    torch.manual_seed(1)
    save_checkpoint(build_model("tiny", layers=2, dim=64, heads=2), root / "teacher.safetensors")
    base = {
        "model": {"size": "tiny", "layers": 2, "dim": 64, "heads": 2, "dropout": 0.1},
        "teachers": {"speech": {"kind": "usad", "path": str(root / "teacher.safetensors")}},
        "objective": {"num_layers": 2, "head_hidden": 32},
        "data": {"manifests": [str(root / "manifest.tsv")], "max_seconds": 1.5, "min_seconds": 0.5},
        "train": {"lr": 2e-3, "warmup_steps": 2, "max_steps": 5, "batch_seconds": 6.0, "log_every": 1,
                  "ckpt_every": 1, "device": "cpu"},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    return root


def metrics(run_dir: "str | Path") -> dict[int, dict[str, float]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        return {int(r["step"]): {k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)}


def checkpoints(run_dir: "str | Path") -> list[str]:
    return sorted(os.listdir(Path(run_dir) / "checkpoints"))


def assert_same_losses(a: dict, b: dict, steps: "list[int]", rel: float) -> None:
    for step in steps:
        keys = [k for k in a[step] if k.startswith("loss")]
        assert len(keys) >= 3  # the total and one per distilled layer
        for key in keys:
            assert abs(b[step][key] - a[step][key]) <= rel * abs(a[step][key]), (step, key, a[step][key], b[step][key])


@pytest.fixture(scope="module")
def uninterrupted(root: Path) -> dict[int, dict[str, float]]:
    config = config_for(root, "uninterrupted", "train.keep_last=10")
    train(config, progress=False)
    assert checkpoints(config["run_dir"]) == [f"step_{s:08d}.pt" for s in range(1, 6)]
    return metrics(config["run_dir"])


def test_keep_last_prunes_and_a_rerun_resumes_from_the_newest_checkpoint(root: Path, uninterrupted: dict,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cut = config_for(root, "keep", "train.keep_last=2", "train.stop_after=4")
    train(cut, progress=False)
    assert checkpoints(cut["run_dir"]) == ["step_00000003.pt", "step_00000004.pt"]  # 1 and 2 pruned
    capsys.readouterr()
    again = config_for(root, "keep", "train.keep_last=2")
    train(again, progress=False)
    assert f"resumed {again['run_dir']} at step 4 from step_00000004.pt" in capsys.readouterr().out
    assert checkpoints(again["run_dir"]) == ["step_00000004.pt", "step_00000005.pt"]
    done = metrics(again["run_dir"])
    assert sorted(done) == [1, 2, 3, 4, 5]
    assert_same_losses(uninterrupted, done, [1, 2, 3, 4, 5], rel=1e-6)


class SigtermOnCall(Teacher):
    """The tiny teacher, but the process gets SIGTERM while it computes step `at`'s targets."""

    def __init__(self, inner: Teacher, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0
        self.frame_rate, self.num_layers, self.dim = inner.frame_rate, inner.num_layers, inner.dim

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        self.calls += 1
        if self.calls == self.at:
            signal.raise_signal(signal.SIGTERM)
        return self.inner.extract(wavs, wav_lens)


def test_sigterm_then_the_same_command_gives_the_losses_of_an_uninterrupted_run(root: Path, uninterrupted: dict) -> None:
    """README: "the losses after resuming equal an uninterrupted run's within 1e-6" (dropout 0.1,
    so the RNG states saved at the signal matter, as do the optimizer, scheduler and sampler)."""
    config = config_for(root, "term", "train.ckpt_every=100", "train.keep_last=10")
    teacher = build_teacher(config["teachers"]["speech"]).freeze()
    train(config, teachers={"speech": SigtermOnCall(teacher, at=2)}, progress=False)
    assert checkpoints(config["run_dir"]) == ["step_00000002.pt"]  # saved because of the signal
    assert sorted(metrics(config["run_dir"])) == [1, 2]
    train(config, progress=False)  # the same command again
    resumed = metrics(config["run_dir"])
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    assert_same_losses(uninterrupted, resumed, [3, 4, 5], rel=1e-6)


def _worker(rank: int, world: int, port: int, config: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(config, progress=False)


def test_resume_with_another_process_count_gives_the_same_losses(root: Path) -> None:
    """One process x grad_accum 2 for two steps, then two gloo processes x grad_accum 1: the losses
    of steps 3-5 are those of the one-process run that was never stopped. No dropout: the RNG
    streams of a different process count are reseeded (the trainer says so)."""
    opts = ("model.dropout=0.0", "train.grad_accum=2")
    whole = config_for(root, "accum_whole", *opts)
    train(whole, progress=False)
    first = config_for(root, "accum_then_ddp", *opts, "train.stop_after=2")
    train(first, progress=False)
    assert checkpoints(first["run_dir"])[-1] == "step_00000002.pt"
    rest = config_for(root, "accum_then_ddp", "model.dropout=0.0", "train.grad_accum=1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(2, port, rest), nprocs=2, join=True)
    a, b = metrics(whole["run_dir"]), metrics(rest["run_dir"])
    assert sorted(b) == [1, 2, 3, 4, 5]
    assert_same_losses(a, b, [3, 4, 5], rel=1e-5)
    with pytest.raises(ValueError, match=r"world_size x grad_accum = 2 micro-batches per step, this run has 1 x 1"):
        train(config_for(root, "accum_then_ddp", "model.dropout=0.0", "train.grad_accum=1"), progress=False)


def test_presets_carry_the_papers_table_ii_and_the_readme_optimizer_defaults() -> None:
    table_ii = {"small_ablation": (5e-4, 4000, 150000, 200.0), "small": (8e-4, 8000, 400000, 800.0),
                "base": (1e-3, 8000, 400000, 800.0), "large": (1.5e-3, 8000, 400000, 800.0)}
    for preset, (lr, warmup, steps, seconds) in table_ii.items():
        tc = load_config(preset, ["teachers.wavlm.path=x", "teachers.atst.path=y"])["train"]
        assert (tc["lr"], tc["warmup_steps"], tc["max_steps"], tc["batch_seconds"]) == (lr, warmup, steps, seconds), preset
        assert (tc["betas"], tc["eps"], tc["weight_decay"], tc["clip_grad"]) == ([0.9, 0.98], 1e-6, 0.01, 10.0), preset


def expected_lr(peak: float, warmup: int, total: int, step: int) -> float:
    """README: linear warmup then linear decay. Step s (1-based) warms up as s / warmup and then
    falls linearly to 0 at `total`: with warmup 2 and 5 steps, 0.5, 1, 1, 2/3, 1/3 of the peak."""
    return peak * {1: 0.5, 2: 1.0, 3: 1.0, 4: 2 / 3, 5: 1 / 3}[step] if (warmup, total) == (2, 5) else float("nan")


def test_adamw_schedule_and_clipping_are_what_readme_says(root: Path) -> None:
    """Every update of steps 2-5 recomputed by hand from the checkpoints before and after it:
    p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps), wd 0.01 on matrices and 0 on biases and
    norm weights (1-D tensors), betas (0.9, 0.98), eps 1e-6 (the README defaults; this config never sets them),
    lr from the warmup/decay schedule; and the gradient that entered the moments was clipped to
    clip_grad (here 0.05, below the real norm) while metrics.csv logs the norm before clipping."""
    clip, peak = 0.05, 2e-3
    config = config_for(root, "adamw", f"train.clip_grad={clip}", "train.keep_last=10")
    train(config, progress=False)
    logged = metrics(config["run_dir"])
    ckpt = [torch.load(Path(config["run_dir"]) / "checkpoints" / name, weights_only=False)
            for name in checkpoints(config["run_dir"])]
    assert [c["step"] for c in ckpt] == [1, 2, 3, 4, 5]
    b1, b2, eps, wd = 0.9, 0.98, 1e-6, 0.01
    for step in range(1, 6):
        assert logged[step]["lr"] == pytest.approx(expected_lr(peak, 2, 5, step), rel=1e-12)

    def named(state: dict) -> dict[str, torch.Tensor]:
        student = {f"student.{k}": v for k, v in state["student"].items() if not k.startswith("final_norm.")}
        return {**student, **{f"heads.{k}": v for k, v in state["heads"].items()}}

    names = list(named(ckpt[0]))
    groups = ckpt[0]["optimizer"]["param_groups"]
    assert [(g["betas"], g["eps"], g["weight_decay"]) for g in groups] == [((b1, b2), eps, wd), ((b1, b2), eps, 0.0)]
    order = groups[0]["params"] + groups[1]["params"]
    assert sorted(order) == list(range(len(names)))
    matrices = [n for n in names if ckpt[0]["student" if n.startswith("student.") else "heads"][n.split(".", 1)[1]].dim() >= 2]
    vectors = [n for n in names if n not in matrices]
    assert "student.blocks.0.attn_norm.weight" in vectors and "student.blocks.0.attn.q_proj.bias" in vectors
    # the rule is "decay on tensors of 2 or more dimensions": the attention's learned u/v position
    # biases ([heads, head_dim]) are decayed like weights, although README says "not on biases"
    assert "student.blocks.0.attn.pos_bias_u" in matrices
    param_of = dict(zip(order, matrices + vectors))  # the trainer lists matrices first, then the rest
    decay = {n: wd if n in matrices else 0.0 for n in names}

    # step 1: the moments hold the clipped gradient (Adam moments start at zero)
    state1 = ckpt[0]["optimizer"]["state"]
    m1 = torch.cat([state1[i]["exp_avg"].flatten().double() for i in order]) / (1 - b1)
    v1 = torch.cat([state1[i]["exp_avg_sq"].flatten().double() for i in order]) / (1 - b2)
    assert logged[1]["grad_norm"] > 4 * clip  # so clipping had work to do
    assert float(m1.norm()) == pytest.approx(clip, rel=1e-4)
    assert float(v1.sqrt().norm()) == pytest.approx(clip, rel=1e-4)

    for before, after in zip(ckpt[:-1], ckpt[1:]):
        step = after["step"]
        lr = expected_lr(peak, 2, 5, step)
        p0, p1 = named(before), named(after)
        moments = after["optimizer"]["state"]
        for index, name in param_of.items():
            m, v = moments[index]["exp_avg"].double(), moments[index]["exp_avg_sq"].double()
            assert m.shape == p0[name].shape, (index, name)
            assert float(moments[index]["step"]) == step
            m_hat, v_hat = m / (1 - b1 ** step), v / (1 - b2 ** step)
            want = p0[name].double() * (1 - lr * decay[name]) - lr * m_hat / (v_hat.sqrt() + eps)
            torch.testing.assert_close(p1[name].double(), want, rtol=5e-7, atol=5e-8, msg=lambda s: f"step {step} {name}: {s}")
