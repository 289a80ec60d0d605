"""The X-ARES encoder (usad_upstream/xares_encoder.py) under xares's own checker and loader, at
50 Hz (a tiny random student) and 25 Hz (the USAD 2.0-style release stand-in through its own
code); compat.patch_xares on a fresh interpreter."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch

from release_standins import speech_like, standin_v2  # noqa: F401 (fixtures)
from usad_upstream import UsadConfig, build_model, save_checkpoint
from usad_upstream.xares_encoder import CHECKPOINT_ENV, OPTIONS_ENV, UsadEncoder

pytest.importorskip("xares.audio_encoder_checker", reason="the xares extra is not installed (make setup installs it)")
from xares.audio_encoder_checker import check_audio_encoder  # noqa: E402
from xares.utils import attr_from_py_path  # noqa: E402

ENCODER_MODULE = "usad_upstream/xares_encoder.py"  # the path xares.run takes


def xares_built(monkeypatch: pytest.MonkeyPatch, checkpoint: Path, **options: object) -> torch.nn.Module:
    """The encoder the way xares.run builds it: the one *Encoder of the module, no arguments."""
    monkeypatch.setenv(CHECKPOINT_ENV, str(checkpoint))
    monkeypatch.setenv(OPTIONS_ENV, json.dumps(options))
    return attr_from_py_path(ENCODER_MODULE, endswith="Encoder")()


def frames(samples: int, hop: int) -> int:
    """Encoder frames of `samples` at 16 kHz: fbank frames (N - 400) // 160 + 1, then time strides."""
    fbank = (samples - 400) // 160 + 1
    return (fbank - 1) // (hop // 160) + 1


def test_tiny_student_passes_xares_checker_at_its_frame_rate(monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    encoder = xares_built(monkeypatch, tiny_checkpoint)
    assert type(encoder).__name__ == "UsadEncoder"
    assert check_audio_encoder(encoder)
    assert (encoder.sampling_rate, encoder.output_dim, encoder.hop_size_in_ms) == (16000, 192, 20.0)
    audio = speech_like(3.0).unsqueeze(0)
    out = encoder(audio)
    assert out.shape == (1, frames(48000, 320), 192) == (1, 149, 192)
    assert out.dtype == torch.float32
    # the mean of all block outputs, exactly as the tiny model computes them
    model = encoder.model.encoder.eval()
    with torch.inference_mode():
        blocks = model(audio, torch.tensor([48000]))["hidden_states"]
    torch.testing.assert_close(out, torch.stack(blocks).mean(0), atol=1e-5, rtol=1e-5)
    assert encoder(audio[0]).shape == out.shape  # X-ARES may hand over one clip as [N]


def test_release_at_25_hz_reports_40_ms_hops(monkeypatch: pytest.MonkeyPatch, standin_v2: Path) -> None:
    encoder = xares_built(monkeypatch, standin_v2, trust_remote_code=True)
    assert check_audio_encoder(encoder)
    assert encoder.hop_size_in_ms == 40.0
    assert encoder(speech_like(3.0).unsqueeze(0)).shape[1] == frames(48000, 640) == 75


@pytest.mark.skipif("frame_rate" not in {f.name for f in dataclasses.fields(UsadConfig)},
                    reason="UsadConfig has no frame_rate field in this tree (native 25 Hz students come with USAD 2.0)")
def test_native_25_hz_student_passes_xares_checker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = save_checkpoint(build_model("tiny", frame_rate=25), tmp_path / "tiny25.safetensors")
    encoder = xares_built(monkeypatch, path)
    assert check_audio_encoder(encoder)
    assert encoder.hop_size_in_ms == 40.0
    assert encoder(speech_like(3.0).unsqueeze(0)).shape[1] == frames(48000, 640)


def test_options_from_the_environment(monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    audio = speech_like(2.0, seed=1).unsqueeze(0)
    last = xares_built(monkeypatch, tiny_checkpoint, layers="last")
    with torch.inference_mode():
        blocks = last.model.encoder.eval()(audio, torch.tensor([32000]))["hidden_states"]
    torch.testing.assert_close(last(audio), blocks[-1], atol=1e-5, rtol=1e-5)
    wide = xares_built(monkeypatch, tiny_checkpoint, layers="1,3", pooling="concat")
    assert wide.output_dim == 384 and check_audio_encoder(wide)


def test_bad_configuration_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with pytest.raises(ValueError, match=CHECKPOINT_ENV):
        UsadEncoder()
    monkeypatch.setenv(CHECKPOINT_ENV, str(tiny_checkpoint))
    monkeypatch.setenv(OPTIONS_ENV, "{layers: last}")
    with pytest.raises(ValueError, match=f"{OPTIONS_ENV} is not valid JSON"):
        UsadEncoder()
    monkeypatch.setenv(OPTIONS_ENV, '["last"]')
    with pytest.raises(ValueError, match="JSON object"):
        UsadEncoder()
    with pytest.raises(ValueError, match="layers"):
        UsadEncoder(tiny_checkpoint, layers="7")


DECODE = """
import io, sys, numpy, soundfile
{patch}
import webdataset.autodecode as decode
wav, sr = decode.torch_audio("clip.wav", open(sys.argv[1], "rb").read())
expected, _ = soundfile.read(sys.argv[1], dtype="float32")
assert sr == 16000 and numpy.allclose(wav[0].numpy(), expected), "decoded samples differ"
import xares.task  # xares imports torchaudio at top level
print("decoded", wav.shape[-1])
"""


def _decode_in_fresh_process(wav: Path, patch: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DECODE.format(patch=patch), str(wav)], capture_output=True, text=True,
                          timeout=300)


def test_patch_xares_lets_webdataset_decode_clips_and_xares_import(tmp_path: Path) -> None:
    """xares decodes its WebDataset audio with webdataset's torch_audio (torchaudio.load): on this
    stack that needs the patch, in a process that never saw it (the test process has)."""
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, speech_like(0.5).numpy(), 16000, subtype="PCM_16")
    patched = _decode_in_fresh_process(wav, "from usad_upstream.compat import patch_xares; patch_xares()")
    assert patched.returncode == 0, patched.stderr[-2000:]
    assert patched.stdout.split() == ["decoded", "8000"]
    if subprocess.run([sys.executable, "-c", "import torchcodec.decoders"], capture_output=True).returncode != 0:
        unpatched = _decode_in_fresh_process(wav, "")
        assert unpatched.returncode != 0  # the breakage the patch is for (torchaudio/torchcodec on a CPU torch)
