import pytest
import torch

import usad_upstream
from usad_upstream import build_model
from usad_upstream.frontend import fbank
from usad_upstream.compat import import_torchaudio

from conftest import tone

PUBLISHED = {"small": 24.76e6, "base": 97.24e6, "large": 335.88e6}


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_parameter_counts_within_one_percent(size):
    with torch.device("meta"):
        model = build_model(size)
    assert abs(model.num_parameters() - PUBLISHED[size]) / PUBLISHED[size] < 0.01


def test_presets_and_overrides():
    model = build_model("tiny", layers=2, dropout=0.0)
    assert model.config.dim == 192 and len(model.blocks) == 2 and model.config.dropout == 0.0
    with pytest.raises(ValueError, match="unknown USAD size"):
        build_model("huge")
    with pytest.raises(ValueError, match="unknown config override"):
        build_model("tiny", depth=3)
    with pytest.raises(ValueError, match="divisible"):
        build_model("tiny", heads=5)


def test_fbank_matches_direct_torchaudio_call():
    wav = tone(1.3)
    kaldi = import_torchaudio().compliance.kaldi
    direct = kaldi.fbank(
        (wav - wav.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10,
    )
    assert torch.allclose(fbank(wav), (direct + 4.268) / (2 * 4.569))
    segmented = fbank(wav, segment_frames=7)  # long audio is done in segments, same frames
    assert segmented.shape == direct.shape and torch.allclose(segmented, fbank(wav), atol=1e-5)


def test_output_structure_and_frame_rate():
    model = build_model("tiny").eval()
    with torch.inference_mode():
        out = model(tone(2.0)[None])
    assert len(out["hidden_states"]) == len(out["ffn"]) == 4
    assert out["embedding"].shape == out["x"].shape
    assert out["x"].shape == out["hidden_states"][-1].shape == (1, int(out["lengths"][0]), 192)
    assert out["fbank"].shape[-1] == 128


@pytest.mark.parametrize("n", [400, 401, 719, 720, 16000, 16159, 33333, 160000])
def test_frames_are_fifty_hertz(n):
    model = build_model("tiny", layers=1).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, n) * 0.1)
    t = out["hidden_states"][0].shape[1]
    assert t == int(out["lengths"][0]) and abs(t - round(n / 320)) <= 2


def test_padded_batch_matches_items_run_alone():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    lens = torch.tensor([48000, 20013, 401, 31999])
    batch = torch.randn(4, 48000) * 0.1
    with torch.inference_mode():
        out = model(batch, lens)
        for i, n in enumerate(lens.tolist()):
            alone = model(batch[i : i + 1, :n])
            t = int(alone["lengths"][0])
            assert int(out["lengths"][i]) == t
            for key in ("hidden_states", "ffn"):
                for a, b in zip(alone[key], out[key]):
                    assert (a[0] - b[i, :t]).abs().max() < 1e-4
            assert (alone["x"][0] - out["x"][i, :t]).abs().max() < 1e-4
            assert out["x"][i, t:].abs().max() == 0 if t < out["x"].shape[1] else True


def test_long_input_is_chunked_into_one_continuous_output():
    model = build_model("tiny", layers=2, max_fbank_frames=200).eval()
    wav = tone(7.3)
    lens = torch.tensor([wav.numel(), 30000])
    with torch.inference_mode():
        out = model(torch.stack([wav, wav]), lens)
        frames = int(out["lengths"][0])
        assert out["x"].shape[1] == frames == (1 + (wav.numel() - 400) // 160 - 1) // 2 + 1
        assert int(out["lengths"][1]) == (1 + (30000 - 400) // 160 - 1) // 2 + 1
        feats = out["fbank"][:1]
        for start in range(0, feats.shape[1], 200):  # each window equals encoding its fbank alone
            window = feats[:, start : start + 200]
            ref = model.encode(window, torch.tensor([window.shape[1]]))["x"][0]
            got = out["x"][0, start // 2 : start // 2 + ref.shape[0]]
            assert (got - ref).abs().max() < 1e-4


@pytest.mark.parametrize(
    "wavs, lens, message",
    [
        (torch.zeros(16000), None, "rank 2"),
        (torch.zeros(1, 16000, dtype=torch.int16), None, "floating point"),
        (torch.full((1, 16000), float("nan")), None, "NaN or Inf"),
        (torch.zeros(1, 399), None, "minimum is 400"),
        (torch.zeros(0, 1000), None, "empty"),
        (torch.zeros(2, 1000), torch.tensor([1000, 2000]), "exceeds"),
        (torch.zeros(2, 1000), torch.tensor([1000]), "one length per item"),
        ([0.0] * 1000, None, "torch.Tensor"),
    ],
)
def test_bad_input_gets_clear_value_error(wavs, lens, message):
    model = build_model("tiny", layers=1)
    with pytest.raises(ValueError, match=message):
        model(wavs, lens)


def test_public_api():
    assert set(usad_upstream.__all__) >= {"build_model", "load_model", "save_checkpoint"}


def test_position_cache_is_used_only_outside_autograd_and_follows_weight_updates():
    torch.manual_seed(0)
    model = build_model("tiny", layers=1, dropout=0.0)
    wav = tone(1.0)[None]
    with torch.no_grad():
        before = model(wav)["x"]
    with torch.no_grad():
        model.blocks[0].attn.pos_proj.weight.mul_(2.0)  # an optimizer-style in-place update
        after = model(wav)["x"]
    fresh = build_model("tiny", layers=1, dropout=0.0)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(after, fresh(wav)["x"], atol=1e-6)
    assert not torch.allclose(before, after)
    out = model(wav)["x"].sum()  # with autograd on, gradients reach pos_proj
    out.backward()
    assert model.blocks[0].attn.pos_proj.weight.grad is not None


def test_blocked_relative_bias_equals_the_full_shifted_product():
    from usad_upstream.attention import rel_shift, relative_position_bias

    torch.manual_seed(0)
    for t in (1, 5, 130, 300):
        q = torch.randn(2, 3, t, 8)
        p = torch.randn(3, 8, 2 * t - 1)
        full = rel_shift(torch.matmul(q, p))
        assert full.shape == (2, 3, t, t)
        brute = torch.einsum("bhid,hdij->bhij", q, torch.stack(
            [p[:, :, t - 1 - i : 2 * t - 1 - i] for i in range(t)], dim=2))
        assert torch.allclose(full, brute, atol=1e-5)
        assert torch.allclose(relative_position_bias(q, p, block=64), full, atol=1e-5)


def test_torchaudio_first_imported_in_inference_mode_keeps_fbank_differentiable():
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from usad_upstream.compat import import_torchaudio\n"
        "with torch.inference_mode():\n"
        "    import_torchaudio()\n"
        "from usad_upstream.frontend import fbank\n"
        "w = torch.randn(16000, requires_grad=True)\n"
        "fbank(w).sum().backward()\n"
        "assert w.grad is not None\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
