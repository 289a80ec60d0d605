"""The HEAR API module: sizes, exact timestamps, layer options, chunked long input, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import hear_api
from usad_upstream import build_model, load_model as load_usad, save_checkpoint
from usad_upstream.frontend import fbank

from conftest import tone


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> hear_api.UsadHearModel:
    return hear_api.load_model(str(tiny_checkpoint))


def expected_frames(num_samples: int) -> int:
    """Kaldi frames (snip_edges) 1 + (N - 400) // 160, then ceil(F / 2) after the stride-2 conv."""
    return -(-(1 + (num_samples - 400) // 160) // 2)


def test_model_attributes(model: hear_api.UsadHearModel) -> None:
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000
    assert type(model.scene_embedding_size) is int and type(model.timestamp_embedding_size) is int
    assert model.scene_embedding_size == model.timestamp_embedding_size == 192  # tiny: D = 192, mean of layers
    assert model.layers == (1, 2, 3, 4)
    assert not model.training


@pytest.mark.parametrize("num_samples", [400, 401, 559, 560, 719, 16001, 32123])
def test_shapes_and_exact_timestamps(model: hear_api.UsadHearModel, num_samples: int) -> None:
    audio = torch.stack([tone(num_samples / 16000, 300.0), tone(num_samples / 16000, 900.0)])
    emb, ts = hear_api.get_timestamp_embeddings(audio, model)
    frames = expected_frames(num_samples)
    assert emb.shape == (2, frames, 192) and emb.dtype == torch.float32
    assert ts.shape == (2, frames) and ts.dtype == torch.float32
    want = (torch.arange(frames, dtype=torch.float64) * 320 + 200) / 16  # centre sample / 16 samples per ms
    assert torch.equal(ts[0].double(), want) and torch.equal(ts[1], ts[0])
    assert ts[0, 0] == 12.5 and (frames == 1 or float(ts[0, 1] - ts[0, 0]) == 20.0)
    scene = hear_api.get_scene_embeddings(audio, model)
    assert scene.shape == (2, 192) and scene.dtype == torch.float32
    torch.testing.assert_close(scene, emb.mean(dim=1), rtol=1e-5, atol=1e-6)


def test_timestamp_is_the_centre_of_the_frame_receptive_field(model: hear_api.UsadHearModel) -> None:
    """Measured, not assumed: the waveform samples that frame j's conv frontend output depends
    on form an interval whose centre, in ms, is the reported timestamp."""
    wav = tone(0.5, 440.0).requires_grad_(True)
    feats = fbank(wav).unsqueeze(0)
    out, _ = model.encoder.subsampling(feats, torch.tensor([feats.shape[1]]))
    _, ts = hear_api.get_timestamp_embeddings(wav.detach()[None], model)
    probe = torch.randn(out.shape[-1], generator=torch.Generator().manual_seed(0))  # a plain sum is constant after LayerNorm
    for j in (5, 10, 11):
        (grad,) = torch.autograd.grad(out[0, j] @ probe, wav, retain_graph=True)
        # The global mean subtraction gives every sample the same gradient term; the frame's own
        # receptive field is exactly where the gradient differs from it.
        support = torch.nonzero(grad != grad[-1]).squeeze(1)
        first, last = int(support[0]), int(support[-1])
        assert last - first + 1 <= 7 * 160 + 400  # fbank frames 2j-3 .. 2j+3
        centre_ms = (first + last + 1) / 2 / 16
        assert abs(centre_ms - float(ts[0, j])) <= 1 / 16, (j, first, last, float(ts[0, j]))


def test_batch_equals_alone(model: hear_api.UsadHearModel) -> None:
    audio = torch.stack([tone(0.6, f) for f in (200.0, 700.0, 2500.0)])
    emb, _ = hear_api.get_timestamp_embeddings(audio, model)
    scene = hear_api.get_scene_embeddings(audio, model)
    for i in range(3):
        alone, _ = hear_api.get_timestamp_embeddings(audio[i : i + 1], model)
        torch.testing.assert_close(emb[i], alone[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(scene[i], hear_api.get_scene_embeddings(audio[i : i + 1], model)[0], rtol=1e-4, atol=1e-5)


def test_layer_options_select_block_outputs(tiny_checkpoint: Path) -> None:
    audio = tone(0.5, 500.0)[None]
    reference = load_usad(tiny_checkpoint)
    with torch.no_grad():
        hidden = reference(audio)["hidden_states"]

    def embed(**options: object) -> torch.Tensor:
        m = hear_api.load_model(str(tiny_checkpoint), **options)
        emb, _ = hear_api.get_timestamp_embeddings(audio, m)
        assert emb.shape[-1] == m.timestamp_embedding_size == m.scene_embedding_size
        return emb

    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embed(), torch.stack(hidden).mean(0), **close)
    torch.testing.assert_close(embed(layers="last"), hidden[-1], **close)
    torch.testing.assert_close(embed(layers="2, 4", pooling="concat"), torch.cat([hidden[1], hidden[3]], -1), **close)
    torch.testing.assert_close(embed(layers=[1, 3]), (hidden[0] + hidden[2]) / 2, **close)
    torch.testing.assert_close(embed(layers=3), hidden[2], **close)
    assert embed(layers="all", pooling="concat").shape[-1] == 4 * 192


@pytest.mark.parametrize(
    "options, match",
    [
        ({"layers": "first"}, "layers='first' is invalid"),
        ({"layers": "0,1"}, "between 1 and 4"),
        ({"layers": [5]}, "between 1 and 4"),
        ({"layers": "2,2"}, "repeats a layer"),
        ({"pooling": "max"}, "pooling='max' is invalid"),
        ({"max_fbank_frames": 3}, "must be even"),
        ({"max_fbank_frames": "100"}, "must be an even int"),
        ({"layer": "last"}, r"unknown option\(s\) \['layer'\]"),
    ],
)
def test_bad_options(tiny_checkpoint: Path, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hear_api.load_model(str(tiny_checkpoint), **options)


def test_load_model_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a USAD checkpoint.*usad init --size base"):
        hear_api.load_model()
    with pytest.raises(ValueError, match="checkpoint not found"):
        hear_api.load_model(str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize(
    "audio, match",
    [
        (torch.zeros(16000), r"rank 2"),
        (torch.zeros(1, 1, 16000), r"rank 2"),
        (torch.zeros(2, 16000, dtype=torch.int16), "floating point"),
        (torch.zeros(2, 399), "too short"),
        (torch.zeros(2, 0), "empty"),
        (np.zeros((2, 16000), dtype=np.float32), "torch.Tensor"),
    ],
)
def test_bad_audio(model: hear_api.UsadHearModel, audio: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hear_api.get_timestamp_embeddings(audio, model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        hear_api.get_scene_embeddings(audio, model)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_audio(model: hear_api.UsadHearModel, bad: float) -> None:
    audio = tone(0.5)[None].clone()
    audio[0, 1234] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        hear_api.get_timestamp_embeddings(audio, model)


def test_model_must_come_from_load_model(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="hear_api.load_model"):
        hear_api.get_scene_embeddings(tone(0.5)[None], load_usad(tiny_checkpoint))  # type: ignore[arg-type]


def test_float64_audio_gives_float32(model: hear_api.UsadHearModel) -> None:
    audio = tone(0.7)[None]
    emb64, _ = hear_api.get_timestamp_embeddings(audio.double(), model)
    emb32, _ = hear_api.get_timestamp_embeddings(audio, model)
    assert emb64.dtype == torch.float32
    torch.testing.assert_close(emb64, emb32, rtol=1e-4, atol=1e-5)


def test_five_minutes_in_bounded_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long clip is encoded window by window (here 4 s windows), every frame accounted for."""
    torch.manual_seed(0)
    micro = save_checkpoint(build_model("tiny", dim=32, heads=2, layers=2, conv_channels=4), tmp_path / "micro.safetensors")
    window = 400  # fbank frames -> 200 encoder frames per window
    model = hear_api.load_model(str(micro), max_fbank_frames=window)
    seen: list[int] = []
    encode = model.encoder.encode

    def spy(feats: torch.Tensor, frame_lens: torch.Tensor) -> dict:
        seen.append(feats.shape[1])
        return encode(feats, frame_lens)

    monkeypatch.setattr(model.encoder, "encode", spy)
    num_samples = 5 * 60 * 16000 + 777
    audio = 0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~150 small windows: on a busy CI box, intra-op threads only add waits
    try:
        emb, ts = hear_api.get_timestamp_embeddings(audio, model)
        head, _ = hear_api.get_timestamp_embeddings(audio[:, : 400 + 160 * (window - 1)], model)
        encoded_windows = list(seen)
        seen.clear()
        scene = hear_api.get_scene_embeddings(audio, model)
    finally:
        torch.set_num_threads(threads)
    frames = expected_frames(num_samples)
    assert emb.shape == (1, frames, 32) and ts.shape == (1, frames)
    assert float(ts[0, -1]) == (320 * (frames - 1) + 200) / 16
    windows = -(-(1 + (num_samples - 400) // 160) // window)
    assert encoded_windows[:windows] == [window] * (windows - 1) + [encoded_windows[windows - 1]]
    assert max(seen) == window and len(seen) == windows
    # The first window sees exactly the samples of its 400 fbank frames, so it matches that audio alone.
    torch.testing.assert_close(emb[:, : window // 2], head, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scene, emb.mean(dim=1), rtol=1e-4, atol=1e-5)
