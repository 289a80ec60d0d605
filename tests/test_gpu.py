"""What only a CUDA GPU can check (skipped without one): a bf16 distillation run from teachers in
their released formats, stopped and resumed through the CLI; its export; and the HEAR and s3prl
entry points on the GPU agreeing with the CPU. USAD_TEST_DEVICE=cpu runs the same logic on CPU."""
import csv
import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from usad_upstream import load_model
from downstream_recipes.cli import main
from usad_upstream.distill.data import build_manifest, write_manifest
from usad_upstream.teachers.fixtures import write_atst_checkpoint, write_wavlm_checkpoint

DEVICE = os.environ.get("USAD_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A tiny student distilled for 6 steps: stopped after 3 (stop_after), resumed by rerunning."""
    root = tmp_path_factory.mktemp("gpu")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        t = np.arange(int((1.5 + 0.1 * i) * 16000)) / 16000
        x = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        sf.write(root / "audio" / f"clip{i}.wav", x.astype(np.float32), 16000)
    entries, _ = build_manifest([root / "audio"], "speech")
    write_manifest(entries, root / "manifest.tsv")
    write_wavlm_checkpoint(root / "wavlm.pt", encoder_layers=4, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                           encoder_attention_heads=4, conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2")
    write_atst_checkpoint(root / "atst.ckpt", dim=64, depth=4)
    config = {
        "run_dir": str(root / "run"),
        "model": {"size": "tiny"},
        "teachers": {"speech": {"kind": "wavlm", "path": str(root / "wavlm.pt")},
                     "audio": {"kind": "atst_frame", "path": str(root / "atst.ckpt")}},
        "objective": {"num_layers": 4},
        "data": {"manifests": [str(root / "manifest.tsv")], "max_seconds": 2.0, "min_seconds": 1.0, "num_workers": 0},
        "train": {"device": DEVICE, "precision": "auto", "lr": 2e-3, "warmup_steps": 1, "max_steps": 6,
                  "batch_seconds": 16.0, "log_every": 1, "ckpt_every": 3, "stop_after": 3},
    }
    (root / "distill.yaml").write_text(yaml.safe_dump(config))
    assert main(["distill", "--config", str(root / "distill.yaml")]) == 0
    assert sorted(os.listdir(root / "run" / "checkpoints")) == ["step_00000003.pt"]
    assert main(["distill", "--config", str(root / "distill.yaml"), "train.stop_after=null"]) == 0
    assert main(["export", str(root / "run"), "-o", str(root / "student.safetensors")]) == 0
    return root


def test_bf16_run_resumes_and_its_loss_falls(distilled):
    with open(distilled / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-2:]) < losses[0], losses
    state = torch.load(distilled / "run" / "checkpoints" / "step_00000006.pt", map_location="cpu", weights_only=False)
    assert state["final"] and state["step"] == 6


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def test_exported_student_agrees_on_gpu_in_bf16_and_on_cpu(distilled):
    model = load_model(distilled / "student.safetensors")
    wavs = 0.1 * torch.randn(2, 32000, generator=torch.Generator().manual_seed(0))
    lens = torch.tensor([32000, 24000])
    with torch.inference_mode():
        cpu = model(wavs, lens)["hidden_states"]
        model.to(DEVICE)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            dev = model(wavs.to(DEVICE), lens.to(DEVICE))["hidden_states"]
    assert dev[-1].device.type == DEVICE
    for a, b in zip(cpu, dev):
        assert _cosine(a, b.float().cpu()) > 0.99


def test_hear_api_and_s3prl_expert_run_on_the_gpu(distilled):
    import hear_api
    from usad_upstream.upstream.expert import UpstreamExpert

    audio = 0.1 * torch.randn(2, 40000, generator=torch.Generator().manual_seed(1))
    hear_model = hear_api.load_model(str(distilled / "student.safetensors"))
    with torch.inference_mode():
        scene_cpu = hear_api.get_scene_embeddings(audio, hear_model)
        hear_model.to(DEVICE)
        scene = hear_api.get_scene_embeddings(audio.to(DEVICE), hear_model)
        frames, stamps = hear_api.get_timestamp_embeddings(audio.to(DEVICE), hear_model)
    assert scene.device.type == frames.device.type == stamps.device.type == DEVICE
    assert _cosine(scene_cpu, scene.cpu()) > 0.999

    expert = UpstreamExpert(str(distilled / "student.safetensors")).eval()
    wavs = [audio[0], audio[1, :30000]]
    with torch.inference_mode():
        cpu = expert(wavs)["hidden_states"]
        expert.to(DEVICE)
        dev = expert([w.to(DEVICE) for w in wavs])["hidden_states"]
    assert len(dev) == len(cpu) and dev[-1].device.type == DEVICE
    assert all(_cosine(a, b.cpu()) > 0.999 for a, b in zip(cpu, dev))
