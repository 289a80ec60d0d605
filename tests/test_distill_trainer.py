"""The distillation trainer: DDP equals one process, exact resume, target cache, CLI + export."""
import csv
import os
import signal
import socket

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import yaml

from conftest import config_for
from usad_upstream import build_model, load_model, save_checkpoint
from downstream_recipes.cli import main
from usad_upstream.distill.cache import TargetCache, build_cache
from usad_upstream.distill.data import DataConfig, build_manifest, read_manifest, write_manifest
from usad_upstream.distill.trainer import distilled_teacher_layers, teacher_specs, train
from usad_upstream.teachers import build_teacher
from usad_upstream.teachers.base import Teacher, TeacherOutput


class Pooled25Hz(Teacher):
    """A 25 Hz teacher for tests: a tiny USAD model's FFN outputs averaged over pairs of frames."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.model = load_model(path)
        self.frame_rate, self.num_layers, self.dim = 25.0, self.model.config.layers, self.model.config.dim
        self.freeze()

    def extract(self, wavs, wav_lens):
        out = self.model(wavs, wav_lens)
        layers = [F.avg_pool1d(x.transpose(1, 2), 2).transpose(1, 2) for x in out["ffn"]]
        return TeacherOutput(layers=layers, lengths=out["lengths"] // 2, frame_rate=25.0)


def make_teachers(config):
    t = config["teachers"]
    return {"speech": build_teacher({"kind": "usad", "path": t["speech"]["path"]}), "audio": Pooled25Hz(t["audio"]["path"])}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    audio = root / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        sr = (16000, 22050)[i % 2]
        t = np.arange(int((1.0 + 0.1 * i) * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.02 * rng.standard_normal(t.shape)
        sf.write(audio / f"clip{i}.wav", x.astype(np.float32), sr)
    entries, _ = build_manifest([audio], "speech")
    write_manifest(entries, root / "manifest.tsv")
    for name, seed in (("speech", 1), ("audio", 2)):
        torch.manual_seed(seed)
        save_checkpoint(build_model("tiny", layers=2, dim=64, heads=2), root / f"{name}.safetensors")
    base = {
        "run_dir": str(root / "run"),
        "model": {"size": "tiny", "layers": 2, "dim": 64, "heads": 2, "dropout": 0.0},
        "teachers": {
            "speech": {"kind": "usad", "path": str(root / "speech.safetensors"), "weight": 1.0},
            "audio": {"kind": "test_pooled", "path": str(root / "audio.safetensors"), "weight": 0.5},
        },
        "objective": {"num_layers": 2, "head_hidden": 32},
        "data": {"manifests": [str(root / "manifest.tsv")], "max_seconds": 1.5, "min_seconds": 0.5},
        "train": {"lr": 2e-3, "warmup_steps": 1, "max_steps": 4, "batch_seconds": 6.0, "log_every": 1,
                  "ckpt_every": 2, "device": "cpu"},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    return root


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as handle:
        rows = list(csv.DictReader(handle))
    return {int(r["step"]): {k: float(v) for k, v in r.items() if k.startswith("loss")} for r in rows}


def _ddp_worker(rank, world, port, config):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(config, teachers=make_teachers(config), progress=False)


def test_two_process_gloo_run_matches_one_process_on_the_same_global_batch(setup):
    single = config_for(setup, "single", "train.grad_accum=2", "train.max_steps=3")
    train(single, teachers=make_teachers(single), progress=False)
    ddp = config_for(setup, "ddp", "train.max_steps=3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, ddp), nprocs=2, join=True)
    one, two = losses(single["run_dir"]), losses(ddp["run_dir"])
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        for key, value in one[step].items():
            assert abs(two[step][key] - value) <= 1e-3 * abs(value), (step, key, value, two[step][key])
    assert one[3]["loss"] < one[1]["loss"]


def test_resume_after_a_kill_continues_the_same_run_exactly(setup):
    opts = ("model.dropout=0.1", "train.max_steps=3", "train.ckpt_every=1")  # dropout: RNG states matter too
    full = config_for(setup, "full", *opts)
    train(full, teachers=make_teachers(full), progress=False)
    cut = config_for(setup, "cut", *opts, "train.stop_after=2")
    train(cut, teachers=make_teachers(cut), progress=False)
    ckpts = sorted(os.listdir(os.path.join(cut["run_dir"], "checkpoints")))
    assert ckpts == ["step_00000001.pt", "step_00000002.pt"]
    os.remove(os.path.join(cut["run_dir"], "checkpoints", ckpts[-1]))  # killed before step 2 was saved
    resumed = config_for(setup, "cut", *opts)
    train(resumed, teachers=make_teachers(resumed), progress=False)
    a, b = losses(full["run_dir"]), losses(cut["run_dir"])
    assert sorted(b) == [1, 2, 3]  # the killed run's row 2 was replaced, not duplicated
    for step in (2, 3):
        for key, value in a[step].items():
            assert abs(b[step][key] - value) <= 1e-6, (step, key)
    with pytest.raises(ValueError, match="different config.*train.lr"):
        other = config_for(setup, "cut", *opts, "train.lr=1e-4")
        train(other, teachers=make_teachers(other), progress=False)


class TermOnSecondCall(Pooled25Hz):
    """A teacher that sends this process SIGTERM while the second step runs (like a pre-emption)."""

    calls = 0

    def extract(self, wavs, wav_lens):
        TermOnSecondCall.calls += 1
        if TermOnSecondCall.calls == 2:
            signal.raise_signal(signal.SIGTERM)
        return super().extract(wavs, wav_lens)


def test_sigterm_saves_the_step_it_finished_and_the_same_command_resumes(setup, capsys):
    config = config_for(setup, "term", "train.ckpt_every=10")
    teachers = make_teachers(config)
    teachers["audio"] = TermOnSecondCall(config["teachers"]["audio"]["path"])
    train(config, teachers=teachers, progress=False)
    ckpt = setup / "term" / "checkpoints" / "step_00000002.pt"
    assert f"stopped by SIGTERM after step 2; saved {ckpt}" in capsys.readouterr().out
    assert sorted(os.listdir(ckpt.parent)) == [ckpt.name]  # ckpt_every=10: saved because of the signal
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    train(config, teachers=make_teachers(config), progress=False)
    assert sorted(losses(config["run_dir"])) == [1, 2, 3, 4]


def test_training_from_the_target_cache_matches_online_targets(setup):
    online = config_for(setup, "online", "data.crop=segments", "train.max_steps=2")
    teachers = make_teachers(online)
    train(online, teachers=teachers, progress=False)
    cached = config_for(setup, "cached", "data.crop=segments", "train.max_steps=2", f"cache.dir={setup / 'cache'}")
    data = DataConfig.from_dict(cached["data"])
    specs = {s.name: s for s in teacher_specs(cached, teachers)}
    layers = {n: distilled_teacher_layers(s.num_layers, 2) for n, s in specs.items()}
    cache = TargetCache.create(setup / "cache", TargetCache.describe(cached["teachers"], specs, layers, data))
    entries = read_manifest(data.manifests[0])
    counts = build_cache(cache, entries, data, teachers, torch.device("cpu"), 6.0, progress=False)
    assert counts["written"] == 10
    assert build_cache(cache, entries, data, teachers, torch.device("cpu"), 6.0, progress=False)["cached_before"] == 10
    train(cached, progress=False)  # no teacher is built or run
    a, b = losses(online["run_dir"]), losses(cached["run_dir"])
    for step in (1, 2):
        assert abs(a[step]["loss"] - b[step]["loss"]) <= 1e-2 * a[step]["loss"]  # float16 targets


def test_cli_distill_with_real_teacher_formats_then_export(setup, capsys):
    from usad_upstream.teachers.fixtures import write_atst_checkpoint

    write_atst_checkpoint(setup / "atst.ckpt", dim=64, depth=2, mlp_hidden=64)  # a 25 Hz ATST-Frame teacher
    run = setup / "cli"
    args = [
        "distill", "--config", str(setup / "base.yaml"), f"run_dir={run}", "train.max_steps=2",
        f"teachers.audio={{kind: atst_frame, path: {setup / 'atst.ckpt'}}}",
    ]
    assert main(args) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["teachers"]["audio"]["kind"] == "atst_frame"
    assert "step 2: loss" in capsys.readouterr().out  # and the throughput in s of audio/s
    out = setup / "student.safetensors"
    assert main(["export", str(run), "-o", str(out)]) == 0
    model = load_model(out)
    state = torch.load(run / "checkpoints" / "step_00000002.pt", weights_only=False)
    torch.testing.assert_close(model.state_dict()["blocks.1.ffn.fc2.weight"], state["student"]["blocks.1.ffn.fc2.weight"])
    assert len(model(torch.randn(1, 16000))["hidden_states"]) == 2
    assert main(["export", str(setup / "audio.safetensors"), "-o", str(out)]) == 2  # not a run checkpoint


def test_teachers_run_in_the_students_autocast_and_give_fp32_targets(tmp_path):
    """On a GPU the trainer runs teachers in bf16 like the student; the loss still sees fp32 targets."""
    from usad_upstream.distill.objective import DistillObjective, TeacherSpec
    from usad_upstream.distill.trainer import teacher_targets
    from usad_upstream.teachers.fixtures import write_atst_checkpoint

    write_atst_checkpoint(tmp_path / "a.ckpt", dim=64, depth=4)
    teachers = {"audio": build_teacher({"kind": "atst_frame", "path": str(tmp_path / "a.ckpt")}).freeze()}
    t = teachers["audio"]
    objective = DistillObjective(32, 4, [TeacherSpec("audio", t.num_layers, t.dim, float(t.frame_rate))])
    wavs = 0.1 * torch.randn(2, 24000, generator=torch.Generator().manual_seed(0))
    lens = torch.tensor([24000, 16000])
    fp32 = teacher_targets(teachers, objective, wavs, lens, None)["audio"]
    bf16 = teacher_targets(teachers, objective, wavs, lens, torch.bfloat16)["audio"]
    assert fp32.layers.keys() == bf16.layers.keys()
    for tl, x in bf16.layers.items():
        assert x.dtype == torch.float32 and not x.is_inference()
        ref = fp32.layers[tl]
        assert not torch.equal(x, ref)  # really computed in bf16
        assert (x - ref).norm() < 0.1 * ref.norm()


# ----------------------------------------------------------------------------- shards, process counts, nodes
def _spawn_train(rank, world, port, config):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(config, teachers=make_teachers(config), progress=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stop_and_resume_from_shards_on_another_process_count_matches_an_uninterrupted_run(setup):
    """Shards -> steps 1-2 in one process (grad_accum 2), SIGKILL-like stop, steps 3-4 on two
    gloo processes (grad_accum 1): every logged loss equals the uninterrupted one-process run's."""
    from usad_upstream.distill.shards import build_shards

    shards = setup / "shards"
    build_shards([setup / "manifest.tsv"], shards, shard_size=3, jobs=1, progress=False)
    opts = (f"data.shards=[{shards}]", "data.manifests=[]", "train.max_steps=4", "train.ckpt_every=1")
    full = config_for(setup, "shards_full", *opts, "train.grad_accum=2")
    train(full, teachers=make_teachers(full), progress=False)
    cut = config_for(setup, "shards_cut", *opts, "train.grad_accum=2", "train.stop_after=2")
    train(cut, teachers=make_teachers(cut), progress=False)
    resumed = config_for(setup, "shards_cut", *opts, "train.grad_accum=1")
    torch.multiprocessing.spawn(_spawn_train, args=(2, free_port(), resumed), nprocs=2, join=True)
    a, b = losses(full["run_dir"]), losses(cut["run_dir"])
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        for key, value in a[step].items():
            assert abs(b[step][key] - value) <= 1e-6, (step, key, value, b[step][key])
    plans = sorted(os.listdir(os.path.join(cut["run_dir"], "plans")))
    assert plans == ["epoch_000000"] or plans[-1].startswith("epoch_")  # the two processes mapped rank 0's plan


def _worker_pids(run_id):
    """(global rank, pid) of the torchrun workers of run `run_id` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                env = dict(v.split(b"=", 1) for v in handle.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if env.get(b"TORCHELASTIC_RUN_ID") == run_id.encode() and b"RANK" in env and b"TORCHELASTIC_RESTART_COUNT" in env:
            found.append((int(env[b"RANK"]), int(entry)))
    return found


@pytest.mark.parametrize("rendezvous", ["c10d", "static"])
def test_two_nodes_of_two_processes_resume_a_killed_worker_without_loss(setup, rendezvous):
    """Two torchrun agents (--nnodes 2), as on two machines (here localhost, gloo); one worker is
    SIGKILLed after step 2. c10d rendezvous with --max-restarts: both nodes restart in place from
    the last checkpoint. Static rendezvous (--node-rank, --master-addr): it cannot restart in place
    (the other node's agent never joins a new round; here the restarted workers' gloo set-up was
    refused), so the job fails and the same command started again resumes, as README says. Either
    way every logged loss equals an uninterrupted one-process run of the same global batch."""
    import subprocess
    import sys
    import time

    from usad_upstream.teachers.fixtures import write_atst_checkpoint

    write_atst_checkpoint(setup / "atst_nodes.ckpt", dim=64, depth=2, mlp_hidden=64)
    teachers = f"teachers.audio={{kind: atst_frame, path: {setup / 'atst_nodes.ckpt'}}}"
    opts = [teachers, "train.max_steps=6", "train.ckpt_every=1", "train.keep_last=10"]
    reference = config_for(setup, "nodes_ref", *opts, "train.grad_accum=4")
    if not os.path.isfile(os.path.join(reference["run_dir"], "metrics.csv")):  # made once for both rendezvous
        train(reference, progress=False)
    run = setup / f"nodes_{rendezvous}"
    run_id = f"usad-test-{os.getpid()}-{rendezvous}"
    # torch 2.13's agents share one worker TCPStore across restart rounds, so the restarted
    # workers' gloo would read the dead round's addresses; opting out gives each round its own
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")

    def launch(log: str) -> list:
        port = free_port()
        where = (["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--max-restarts", "2"] if rendezvous == "c10d"
                 else ["--master-addr", "127.0.0.1", "--master-port", str(port), "--max-restarts", "0"])
        return [subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-id", run_id,
             *where, *(["--node-rank", str(node)] if rendezvous == "static" else []), "--monitor-interval", "0.2",
             "-m", "usad_upstream.cli", "distill", "--config", str(setup / "base.yaml"), f"run_dir={run}", *opts, "train.grad_accum=1"],
            env=env, stdout=open(setup / f"{log}{node}.log", "w"), stderr=subprocess.STDOUT, text=True) for node in (0, 1)]

    def finish(agents: list) -> list:
        try:
            for agent in agents:
                agent.wait(timeout=300)
        except subprocess.TimeoutExpired:
            for agent in agents:
                agent.kill()
                agent.wait()
        return [a.returncode for a in agents]

    agents = launch("node")
    killed = None
    deadline = time.time() + 600
    while killed is None and time.time() < deadline and all(a.poll() is None for a in agents):
        if (run / "checkpoints" / "step_00000002.pt").is_file():
            ranks = dict(_worker_pids(run_id))
            if 3 in ranks:
                os.kill(ranks[3], signal.SIGKILL)  # node 1's second worker dies mid-run (no checkpoint, no goodbye)
                killed = ranks[3]
        time.sleep(0.05)
    codes = finish(agents)
    assert killed is not None, "no worker was killed: " + (setup / "node0.log").read_text()[-2000:]
    log = "node"
    if rendezvous == "static":
        assert all(c != 0 for c in codes), codes  # no in-place restart: the job fails...
        log = "rerun"
        codes = finish(launch(log))  # ...and the same command, started again, resumes it
    outputs = [(setup / f"{log}{node}.log").read_text() for node in (0, 1)]
    assert codes == [0, 0], f"see {setup}/{log}0.log and {log}1.log"
    assert "resumed" in outputs[0], outputs[0][-3000:]  # the workers continued from a checkpoint
    a, b = losses(reference["run_dir"]), losses(run)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        for key, value in a[step].items():
            assert abs(b[step][key] - value) <= 1e-6, (step, key, value, b[step][key])
