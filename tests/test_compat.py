"""compat.patch_s3prl: each patch only where missing; soundfile I/O and the sox effects stand-in."""
from __future__ import annotations

import math
import sys
from types import ModuleType

import pytest
import soundfile
import torch

from usad_upstream import compat
from usad_upstream.compat import apply_effects_file, apply_effects_tensor


def _existing(*args: object, **kwargs: object) -> str:
    return "original"


def test_backend_noops_added_only_when_missing() -> None:
    fake = ModuleType("fake_torchaudio")
    fake.set_audio_backend = _existing
    assert compat._add_backend_noops(fake) == ["torchaudio.get_audio_backend"]
    assert fake.set_audio_backend is _existing
    assert fake.get_audio_backend() == "soundfile"
    assert compat._add_backend_noops(fake) == []


def test_soundfile_io_replaces_only_missing_or_torchcodec_backed(monkeypatch: pytest.MonkeyPatch) -> None:
    working = ModuleType("torchaudio_with_sox")  # e.g. torchaudio 2.1-2.8: nothing to do
    working.load = working.save = working.info = _existing
    assert compat._add_soundfile_io(working) == []
    assert working.load is _existing

    codec = ModuleType("torchaudio_2_11")  # load/save need torchcodec, info is gone
    codec.load = codec.save = codec.load_with_torchcodec = _existing
    monkeypatch.setattr(compat, "_torchcodec_usable", lambda: True)
    assert compat._add_soundfile_io(codec) == ["torchaudio.info"]
    assert codec.load is _existing
    monkeypatch.setattr(compat, "_torchcodec_usable", lambda: False)
    assert compat._add_soundfile_io(codec) == ["torchaudio.load", "torchaudio.save"]
    assert codec.load is compat.soundfile_load and codec.save is compat.soundfile_save
    assert compat._add_soundfile_io(codec) == []


def test_sox_effects_stand_in_only_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    compat.patch_s3prl()  # so the real state is recorded and restored after this test
    fake = ModuleType("fake_torchaudio")
    monkeypatch.delitem(sys.modules, "torchaudio.sox_effects")
    monkeypatch.setattr(compat.importlib.util, "find_spec", lambda name: object())  # a real one exists
    assert compat._add_sox_effects(fake) == []
    assert "torchaudio.sox_effects" not in sys.modules
    monkeypatch.setattr(compat.importlib.util, "find_spec", lambda name: None)
    assert compat._add_sox_effects(fake) == ["torchaudio.sox_effects"]
    assert fake.sox_effects.apply_effects_file is apply_effects_file
    assert sys.modules["torchaudio.sox_effects"] is fake.sox_effects
    assert compat._add_sox_effects(fake) == []


def test_full_torch_load_env_set_only_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compat.FULL_LOAD_ENV, "0")
    assert compat._allow_full_torch_load() == []
    assert compat.os.environ[compat.FULL_LOAD_ENV] == "0"
    monkeypatch.delenv(compat.FULL_LOAD_ENV)
    assert compat._allow_full_torch_load() == [compat.FULL_LOAD_ENV]
    assert compat.os.environ[compat.FULL_LOAD_ENV] == "1"


def test_patch_s3prl_is_idempotent_and_s3prl_imports() -> None:
    compat.patch_s3prl()
    assert compat.patch_s3prl() == []
    import s3prl.downstream.speech_commands.dataset as ks  # `from torchaudio.sox_effects import ...`
    import s3prl.hub as hub
    import torchaudio

    assert callable(hub.wavlm_local) and callable(hub.hubert_local)
    assert callable(ks.apply_effects_file)
    torchaudio.set_audio_backend("sox_io")  # what s3prl calls at import: must not fail


def test_soundfile_save_load_info_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stereo = torch.stack([torch.linspace(-1.5, 1.5, 800), torch.linspace(0.5, -0.5, 800)])
    path = tmp_path / "a.wav"
    compat.soundfile_save(path, stereo, 8000)
    wav, sr = compat.soundfile_load(path)
    assert sr == 8000 and wav.dtype == torch.float32 and torch.equal(wav, stereo)  # float WAV: no clipping
    part, _ = compat.soundfile_load(path, frame_offset=100, num_frames=50, channels_first=False)
    assert torch.equal(part, stereo[:, 100:150].t())
    info = compat.soundfile_info(path)
    assert (info.sample_rate, info.num_frames, info.num_channels, info.bits_per_sample, info.encoding) == (
        8000, 800, 2, 32, "PCM_F",
    )
    pcm = tmp_path / "b.wav"
    compat.soundfile_save(pcm, torch.tensor([[0.5, -0.25]]), 16000, bits_per_sample=16)
    raw, _ = compat.soundfile_load(pcm, normalize=False)
    assert raw.dtype == torch.int16 and raw.tolist() == [[16384, -8192]]
    assert compat.soundfile_info(pcm).encoding == "PCM_S"


def _tone(seconds: float, sr: int = 16000, freq: float = 440.0, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(round(seconds * sr)) / sr
    return amp * torch.sin(2 * math.pi * freq * t)


def test_channels_gain_norm_reverse() -> None:
    stereo = torch.stack([torch.full((10,), 0.2), torch.full((10,), 0.6)])
    mono, sr = apply_effects_tensor(stereo, 16000, [["channels", "1"]])
    assert sr == 16000 and mono.shape == (1, 10) and torch.allclose(mono, torch.full((1, 10), 0.4))
    dup, _ = apply_effects_tensor(mono, 16000, [["channels", "2"]])
    assert dup.shape == (2, 10) and torch.equal(dup[0], dup[1])
    quieter, _ = apply_effects_tensor(mono, 16000, [["gain", "-3.0"]])
    assert torch.allclose(quieter, mono * 10 ** (-3 / 20))
    ramp = torch.linspace(-0.25, 0.1, 8)[None]
    normed, _ = apply_effects_tensor(ramp, 16000, [["norm"]])
    assert torch.isclose(normed.abs().max(), torch.tensor(1.0)) and torch.allclose(normed, ramp / 0.25)
    minus6, _ = apply_effects_tensor(ramp, 16000, [["gain", "-n", "-6"]])
    assert torch.isclose(minus6.abs().max(), torch.tensor(10 ** (-6 / 20)))
    backwards, _ = apply_effects_tensor(ramp, 16000, [["reverse"]])
    assert torch.equal(backwards, ramp.flip(-1))


def test_rate_resamples_keeping_pitch() -> None:
    wav, sr = apply_effects_tensor(_tone(0.5, sr=8000)[None], 8000, [["rate", "16000"]])
    assert sr == 16000 and wav.shape == (1, 8000)
    spectrum = torch.fft.rfft(wav[0]).abs()
    assert abs(int(spectrum.argmax()) * 16000 / 8000 - 440) <= 2  # bin width 2 Hz
    same, sr2 = apply_effects_tensor(wav, 16000, [["rate", "16k"]])
    assert sr2 == 16000 and torch.equal(same, wav)


def test_trim_and_pad_positions() -> None:
    wav = torch.arange(16000, dtype=torch.float32)[None]
    cut, _ = apply_effects_tensor(wav, 16000, [["trim", "0.5", "0.25"]])
    assert torch.equal(cut, wav[:, 8000:12000])
    cut, _ = apply_effects_tensor(wav, 16000, [["trim", "100s", "=0.5"]])
    assert torch.equal(cut, wav[:, 100:8000])
    cut, _ = apply_effects_tensor(wav, 16000, [["trim", "0", "-0.25"]])
    assert torch.equal(cut, wav[:, :12000])
    # s3prl's QbE segment recipe: pad both sides by the target length, then cut one window
    seg, _ = apply_effects_tensor(wav[:, :4000], 16000, [["pad", "0.5", "0.5"], ["trim", "0.6", "0.5"]])
    assert seg.shape == (1, 8000)
    assert torch.equal(seg[0, :2400], torch.arange(1600, 4000, dtype=torch.float32)) and not seg[0, 2400:].any()


def test_silence_removes_long_quiet_runs_like_superb_asv() -> None:
    sr = 16000
    gap = torch.zeros(sr // 2)
    short_gap = torch.zeros(sr // 40)  # 25 ms: shorter than the 0.1 s below-duration, so kept
    wav = torch.cat([gap, _tone(0.3), short_gap, _tone(0.3), gap, _tone(0.4), gap])[None]
    asv = ["silence", "1", "0.1", "0.1%", "-1", "0.1", "0.1%"]
    out, _ = apply_effects_tensor(wav, sr, [asv])
    loud = round(1.0 * sr) + short_gap.numel()
    window = sr // 50  # the RMS window lets each loud run end up to 20 ms late
    assert loud - 3 <= out.shape[-1] <= loud + 2 * window  # - 3: each tone starts at sin(0) = 0
    # a loud burst shorter than the 0.1 s above-duration at the start is trimmed with the silence
    burst = torch.cat([_tone(0.05), gap, _tone(0.3)])[None]
    trimmed, _ = apply_effects_tensor(burst, sr, [["silence", "1", "0.1", "0.1%"]])
    assert round(0.3 * sr) - 1 <= trimmed.shape[-1] <= round(0.3 * sr) + window


def test_apply_effects_file_superb_ks_chain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stereo = torch.stack([_tone(1.0, sr=8000), _tone(1.0, sr=8000)])
    path = tmp_path / "ks.wav"
    soundfile.write(str(path), stereo.t().numpy(), 8000)
    wav, sr = apply_effects_file(str(path), [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"]])
    assert sr == 16000 and wav.shape == (1, 16000)
    assert abs(float(wav.abs().max()) - 0.5 * 10 ** (-3 / 20)) < 0.01


@pytest.mark.parametrize(
    "effects, message",
    [([["vad", "-T", "0.25"]], "'vad'"), ([["trim", "abc"]], "cannot read time"), ([["gain", "-e", "1"]], "-e"),
     ([["silence", "1", "0.1", "0.1"]], "threshold"), ([["channels", "3"]], "channels")],
)
def test_unsupported_or_malformed_effects_raise_value_error(effects: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_effects_tensor(torch.zeros(2, 1600), 16000, effects)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fix applies only where CUDA is absent")
def test_sv_expert_cuda_call_is_kept_on_cpu(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """s3prl's sv_voxceleb1 expert calls `.cuda()` on its attention mask unconditionally; the fix
    wraps the expert's forward when that module is imported (here a stand-in module with the
    same call, since the real forward needs a whole ASV setup: tests/test_superb_tasks.py runs it)."""
    (tmp_path / "usad_fake_sv_expert.py").write_text(
        "import torch\n"
        "class DownstreamExpert:\n"
        "    def forward(self, x):\n"
        "        mask = torch.ones(3)\n"
        "        return x + mask.cuda()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    with pytest.raises((AssertionError, RuntimeError)):  # what torch raises without CUDA
        importlib.import_module("usad_fake_sv_expert").DownstreamExpert().forward(torch.zeros(3))
    del sys.modules["usad_fake_sv_expert"]
    assert compat.after_import("usad_fake_sv_expert", compat._sv_mask_stays_on_cpu)
    assert not compat.after_import("usad_fake_sv_expert", compat._sv_mask_stays_on_cpu)  # one hook only
    module = importlib.import_module("usad_fake_sv_expert")
    assert torch.equal(module.DownstreamExpert().forward(torch.zeros(3)), torch.ones(3))
    assert not compat.after_import("usad_fake_sv_expert", compat._sv_mask_stays_on_cpu)  # imported and fixed already
    with pytest.raises((AssertionError, RuntimeError)):
        torch.ones(1).cuda()  # outside the expert's forward, .cuda() is torch's own again
    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "name", None) != "usad_fake_sv_expert"]
