"""`usad export ... --hf DIR`: our students in the release's format, loadable by transformers'
AutoModel where only torch, torchaudio and transformers are importable."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from release_standins import speech_like, standin_v1  # noqa: F401 (fixture)
from usad_upstream import build_model, load_model, save_checkpoint
from usad_upstream.cli import main
from usad_upstream.model import truncated
from usad_upstream.release import ReleaseError, load_encoder, resolve_checkpoint
from usad_upstream.release import bundle as bundler
from usad_upstream.release import hf_export
from usad_upstream.release.backend import TRUST_ENV

REPO = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter that cannot import this toolkit (nor s3prl): AutoModel, the release's
# dict API, target_layer and load_audio; the outputs go to a file for the parent to compare.
AUTOMODEL_ALONE = r'''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("usad_upstream", "hear_api", "downstream_recipes", "results", "s3prl"):
            raise ModuleNotFoundError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModel
directory, inputs, output = sys.argv[1:4]
model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
data = torch.load(inputs)
with torch.inference_mode():
    out = model(data["wavs"], data["lens"])
    first = model(data["wavs"], data["lens"], target_layer=1)
torch.save({"out": out, "first": first, "audio": model.load_audio(data["audio_path"]),
            "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("usad_upstream", "s3prl"))}, output)
'''


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    return save_checkpoint(build_model("tiny", layers=2), tmp_path_factory.mktemp("student") / "student.safetensors")


@pytest.fixture(scope="module")
def exported(student: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hf") / "usad-tiny"
    assert main(["export", str(student), "--hf", str(directory)]) == 0
    return directory


def test_export_layout_and_model_card(exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", "config.json", "configuration_usad.py", "model.safetensors", "modeling_usad.py",
        "usad_attention.py", "usad_compat.py", "usad_frontend.py", "usad_model.py", "usad_presets.py"]
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_usad.USADConfig", "AutoModel": "modeling_usad.USADModel"}
    assert config["model_type"] == "usad" and config["usad_toolkit"]["config"]["dim"] == 192
    card = (exported / "README.md").read_text()
    assert "| 192 | 2 | 4 | 768 |" in card and "50 Hz" in card and "trust_remote_code=True" in card
    # transformers copies a local snapshot's DIRECT relative imports only: each bundled module is one
    modeling = ast.parse((exported / "modeling_usad.py").read_text())
    direct = {n.module for n in ast.walk(modeling) if isinstance(n, ast.ImportFrom) and n.level == 1}
    assert direct == {p.stem for p in exported.glob("*.py")} - {"modeling_usad"}


def test_automodel_without_this_toolkit_matches_the_native_model(exported: Path, student: Path, tmp_path: Path) -> None:
    wavs = torch.nn.utils.rnn.pad_sequence([speech_like(1.4, 1), speech_like(0.8, 2)], batch_first=True)
    lens = torch.tensor([22400, 12800])
    stereo = np.random.default_rng(0).uniform(-0.5, 0.5, (22050, 2)).astype(np.float32)  # 0.5 s at 44.1 kHz
    sf.write(tmp_path / "clip44.wav", stereo, 44100, subtype="FLOAT")
    torch.save({"wavs": wavs, "lens": lens, "audio_path": str(tmp_path / "clip44.wav")}, tmp_path / "in.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", TRUST_ENV)}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", AUTOMODEL_ALONE, str(exported), str(tmp_path / "in.pt"),
                             str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["modules"] == []
    native = load_model(student)
    with torch.inference_mode():
        want, first = native(wavs, lens), truncated(native, 1)(wavs, lens)
    out = got["out"]
    assert sorted(out) == ["embedding", "ffn", "hidden_states", "lengths", "mel", "x"]
    for name, a, b in [("x", out["x"], want["x"]), ("mel", out["mel"], want["fbank"]),
                       ("embedding", out["embedding"], want["embedding"]), ("x@1", got["first"]["x"], first["x"])]:
        assert float((a - b).abs().max()) <= 1e-5, name
    for a, b in zip(out["hidden_states"] + out["ffn"], want["hidden_states"] + want["ffn"]):
        assert float((a - b).abs().max()) <= 1e-5
    assert len(got["first"]["hidden_states"]) == 1 and torch.equal(out["lengths"], want["lengths"])
    from usad_upstream.compat import import_torchaudio

    mono = torch.from_numpy(stereo.mean(axis=1))
    torch.testing.assert_close(got["audio"], import_torchaudio().functional.resample(mono, 44100, 16000))
    assert got["audio"].shape == (8000,)  # mono, 16 kHz


def test_an_export_reads_back_natively_everywhere(exported: Path, student: Path) -> None:
    resolved = resolve_checkpoint(exported)
    assert resolved.kind == "export" and resolved.snapshot.generation == 0
    back = load_encoder(exported)  # no remote code: our own format
    for key, value in load_model(student).state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    from usad_upstream.upstream import usad

    assert usad(str(exported)).model.config.layers == 2  # s3prl -k DIR, no USAD_TRUST_REMOTE_CODE needed


def test_run_export_carries_teachers_data_and_losses(tmp_path: Path) -> None:
    """A distillation run directory in the trainer's layout: config.yaml, metrics.csv, checkpoints/."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    model = build_model("tiny", layers=2)
    torch.save({"step": 40, "student": model.state_dict(), "student_config": model.config.to_dict(), "heads": {}},
               run / "checkpoints" / "step_00000040.pt")
    (run / "config.yaml").write_text(yaml.safe_dump({
        "teachers": {"speech": {"kind": "wavlm", "path": "/ckpt/WavLM-Base+.pt", "target": "ffn", "domain": "speech"},
                     "audio": {"kind": "atst_frame", "path": "/ckpt/atstframe_base.ckpt"}},
        "data": {"manifests": ["/data/mix.tsv"], "domain_weights": {"speech": 1.0, "sound": 2.0}}}))
    (run / "metrics.csv").write_text("step,loss,loss/speech/L3\n20,1.5,1.2\n40,0.7342,0.61\n")
    directory = tmp_path / "hf"
    assert main(["export", str(run), "--hf", str(directory), "-o", str(tmp_path / "s.safetensors")]) == 0
    card = (directory / "README.md").read_text()
    assert "speech: wavlm `WavLM-Base+.pt` (target ffn, domain speech)" in card
    assert "audio: atst_frame `atstframe_base.ckpt`" in card and "manifest `mix.tsv`" in card
    assert "step 40: distillation loss 0.7342 (metrics.csv)" in card and "loss/speech/L3 0.6100" in card
    assert (tmp_path / "s.safetensors").is_file()


def test_export_refuses_a_used_directory_and_an_unfaithful_bundle(student: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    model = load_model(student)
    with pytest.raises(ReleaseError, match="already exists and is not an empty directory"):
        hf_export.export_hf(model, used)
    right = hf_export.modeling_files

    def broken() -> dict[str, str]:  # a bundle whose attention scale drifted from our model's
        files = right()
        files["usad_attention.py"] = files["usad_attention.py"].replace("math.sqrt(self.score_dim)", "math.sqrt(self.score_dim + 1)")
        return files

    monkeypatch.setattr(hf_export, "modeling_files", broken)
    with pytest.raises(ReleaseError, match=r"the export does not reproduce the model .*block 1 FFN"):
        hf_export.export_hf(model, tmp_path / "new")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.*"))


def test_export_of_a_release_converts_it_first(standin_v1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRUST_ENV, raising=False)
    assert main(["export", str(standin_v1), "--hf", str(tmp_path / "no")]) == 2
    assert main(["export", str(standin_v1), "--hf", str(tmp_path / "yes"), "--trust-remote-code"]) == 0
    card = (tmp_path / "yes" / "README.md").read_text()
    assert card.startswith("---\nlicense: bsd-3-clause\n") and str(standin_v1.resolve()) in card
    release = load_encoder(standin_v1, trust_remote_code=True)
    wav = speech_like(2.0)[None]
    with torch.inference_mode():
        ours, theirs = load_encoder(tmp_path / "yes")(wav), release(wav)
    torch.testing.assert_close(ours["x"], theirs["x"], rtol=0, atol=1e-4)


def test_the_bundle_is_our_source_and_follows_new_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = hf_export.modeling_files()
    source = (REPO / "usad_upstream" / "model.py").read_text()
    tree = ast.parse(source)
    usad_model = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "UsadModel")
    assert ast.get_source_segment(source, usad_model) in files["usad_model.py"]
    assert "def patch_s3prl" not in files["usad_compat.py"] and "def import_torchaudio" in files["usad_compat.py"]
    from transformers.dynamic_module_utils import get_imports

    for name, text in files.items():
        (tmp_path / name).write_text(text)
        assert set(get_imports(tmp_path / name)) <= {"__future__", "contextlib", "copy", "dataclasses", "functools", "importlib",
                                                     "math", "os", "pathlib", "sys", "torch", "torchaudio", "transformers", "types",
                                                     "typing"}, name
    # another engineer's frontend rewrite that imports a new module of ours is bundled too
    package = tmp_path / "pkg"
    package.mkdir()
    for name in ("model", "attention", "frontend", "presets", "compat"):
        (package / f"{name}.py").write_text((REPO / "usad_upstream" / f"{name}.py").read_text())
    (package / "fbank_kernels.py").write_text("import torch\n\n\ndef batched(x):\n    return x\n")
    frontend = (package / "frontend.py").read_text().replace(
        "from .compat import import_torchaudio", "from .compat import import_torchaudio\nfrom .fbank_kernels import batched")
    (package / "frontend.py").write_text(frontend.replace("    frame_lens = num_fbank_frames(wav_lens)\n",
                                                          "    frame_lens = batched(num_fbank_frames(wav_lens))\n"))
    monkeypatch.setattr(bundler, "PACKAGE_DIR", package)
    files = hf_export.modeling_files()
    assert "usad_fbank_kernels.py" in files and "from .usad_fbank_kernels import batched" in files["usad_frontend.py"]
    assert "from .usad_fbank_kernels import __name__" in files["modeling_usad.py"]
