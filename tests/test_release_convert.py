"""`usad convert`: a release as a native checkpoint, written only when every layer agrees with the
release's own code (stand-in snapshots: our reading of the release, see usad_upstream/release/standin)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from release_standins import copy_snapshot, speech_like, standin_v1, standin_v2  # noqa: F401 (fixtures)
from usad_upstream import load_model
from usad_upstream.presets import UsadConfig
from usad_upstream.release import load_encoder, resolve_checkpoint
from usad_upstream.release import convert as conv
from usad_upstream.release.backend import TRUST_ENV

REPO = Path(__file__).resolve().parents[1]


def _usad(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != TRUST_ENV}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "usad_upstream.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def converted(standin_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "student.safetensors"
    with pytest.raises(conv.ReleaseError, match=r"as the reference of the check; allow it with --trust-remote-code"):
        conv.convert_to_file(standin_v1, out)
    assert not out.exists()
    done = _usad("convert", str(standin_v1), "-o", str(out), "--trust-remote-code")
    assert done.returncode == 0, done.stderr
    assert "every layer matches the release's own code" in done.stdout and "licence bsd-3-clause" in done.stdout
    return out


def test_converted_model_is_the_release_with_our_batching(converted: Path, standin_v1: Path) -> None:
    native = load_model(converted)
    cfg = native.config
    assert (cfg.dim, cfg.layers, cfg.heads, cfg.max_fbank_frames) == (192, 2, 4, 3000)
    assert (cfg.ffn_residual_scale, cfg.position_encoding, cfg.attention_scale) == (0.5, "absolute_shift", "model_dim")
    release = load_encoder(standin_v1, trust_remote_code=True)
    wavs = [speech_like(1.3, 1), speech_like(0.5, 2), speech_like(0.9, 3)]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) for w in wavs])
    with torch.inference_mode():
        ours, theirs = native(batch, lens), release(batch, lens)
    assert ours["lengths"].tolist() == theirs["lengths"].tolist()
    for key in ("embedding", "x"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-4)
    for a, b in zip(ours["hidden_states"] + ours["ffn"], theirs["hidden_states"] + theirs["ffn"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    info = _usad("info", str(converted))
    assert "licence: bsd-3-clause (the snapshot's README.md)" in info.stdout
    assert f"converted from: {standin_v1.resolve()}" in info.stdout


@pytest.mark.parametrize("flag, value, first_layer", [
    ("ffn_residual_scale", 1.0, "block 1 output"),  # the FFN itself still agrees
    ("position_encoding", "relative", "block 1 FFN"),
    ("attention_scale", "head_dim", "block 1 FFN"),
])
def test_every_flag_is_needed_and_a_mismatch_names_the_first_layer(
    standin_v1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str, value: object, first_layer: str
) -> None:
    right = conv.release_config
    monkeypatch.setattr(conv, "release_config", lambda snap: dataclasses.replace(right(snap), **{flag: value}))
    out = tmp_path / "x.safetensors"
    with pytest.raises(conv.ConvertError, match=rf"differs from the release at the {first_layer}: max \|diff\|") as info:
        conv.convert_to_file(standin_v1, out, trust_remote_code=True)
    assert "nothing written" in str(info.value) and not out.exists()


def test_release_code_unlike_our_reading_is_refused_in_one_line(standin_v1: Path, tmp_path: Path) -> None:
    """The real modules file is unknown: a release scoring with sqrt(d_head) must not convert silently."""
    snap = copy_snapshot(standin_v1, tmp_path / "other")
    modules = snap / "usad_modules.py"
    modules.write_text(modules.read_text().replace("math.sqrt(d_model)", "math.sqrt(self.d_head)"))
    out = tmp_path / "x.safetensors"
    result = _usad("convert", str(snap), "-o", str(out), "--trust-remote-code")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and not out.exists(), result.stderr
    assert "differs from the release at the block 1 FFN: max |diff|" in lines[0]


def test_an_unknown_tensor_name_is_named(standin_v1: Path, tmp_path: Path) -> None:
    snap = copy_snapshot(standin_v1, tmp_path / "renamed")
    modules = snap / "usad_modules.py"
    modules.write_text(modules.read_text().replace("self.subsample_norm", "self.post_subsample_norm"))
    state = {k.replace("subsample_norm", "post_subsample_norm"): v for k, v in load_file(str(snap / "model.safetensors")).items()}
    save_file(state, str(snap / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(conv.ConvertError, match=r"tensor 'model\.encoder\.post_subsample_norm\.(weight|bias)' has no place"):
        conv.convert(resolve_checkpoint(snap), trust_remote_code=True)


def test_the_release_window_is_read_from_its_code_and_checked_past_30_s(
    standin_v1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = copy_snapshot(standin_v1, tmp_path / "windows")
    code = snap / "usad_model.py"
    code.write_text(code.read_text().replace("MAX_MEL_LENGTH = 3000", "MAX_MEL_LENGTH = 1000"))
    model, _ = conv.convert(resolve_checkpoint(snap), trust_remote_code=True, seconds=(7.3, 31.0))
    assert model.config.max_fbank_frames == 1000
    monkeypatch.setattr(conv, "max_mel_length", lambda snapshot: 3000)
    with pytest.raises(conv.ConvertError, match=r"on 31 s of audio"):  # 7.3 s fits one window either way
        conv.convert(resolve_checkpoint(snap), trust_remote_code=True, seconds=(7.3, 31.0))
    assert conv.CHECK_SECONDS[-1] > 30  # what `usad convert` itself checks


def test_25_hz_release(standin_v2: Path) -> None:
    resolved = resolve_checkpoint(standin_v2)
    if "frame_rate" not in {f.name for f in dataclasses.fields(UsadConfig)}:
        with pytest.raises(conv.ConvertError, match="a 25 Hz release; the native model has no frame_rate option yet"):
            conv.convert(resolved, trust_remote_code=True)
        return
    model, _ = conv.convert(resolved, trust_remote_code=True)  # once the model has 25 Hz, it must verify
    assert model.downsample_rate == 640
