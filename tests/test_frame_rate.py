"""25 Hz students (USAD 2.0's frame_rate: 25) through every consumer: the model, old checkpoints,
s3prl (S3PRLUpstream, the legacy Featurizer), the feature cache and the HEAR timestamps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hear_api
from conftest import tone
from usad_upstream import build_model, load_model, save_checkpoint
from usad_upstream.frontend import fbank, num_fbank_frames
from usad_upstream.model import ConvSubsampling
from usad_upstream.upstream import register_s3prl_upstreams, usad
from usad_upstream.upstream.cache import FEATURE_CACHE_ENV


def frames_25hz(num_samples: int) -> int:
    """fbank frames 1 + (N - 400) // 160, then two stride-2 convs: (N - 400) // 640 + 1."""
    return (num_samples - 400) // 640 + 1


@pytest.fixture(scope="module")
def ckpt_25hz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model("tiny", layers=2, frame_rate=25), tmp_path_factory.mktemp("r25") / "tiny25.safetensors")


def test_25hz_model_frames_padding_and_windows() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", layers=2, frame_rate=25).eval()
    assert model.downsample_rate == 640 and model.subsampling.conv2.stride == (2, 2)
    assert build_model("tiny", layers=2).subsampling.conv2.stride == (1, 2)  # 50 Hz unchanged
    lengths = [400, 1039, 1040, 16399, 16400, 20000]
    wavs = torch.stack([torch.cat([tone(n / 16000, 300.0 + n % 97), torch.zeros(20000 - n)]) for n in lengths])
    with torch.no_grad():
        out = model(wavs, torch.tensor(lengths))
        assert out["lengths"].tolist() == [frames_25hz(n) for n in lengths]
        for i, n in enumerate(lengths):  # a padded batch gives each item what it gets alone
            alone = model(wavs[i : i + 1, :n])
            t = frames_25hz(n)
            for a, b in zip(out["hidden_states"], alone["hidden_states"]):
                torch.testing.assert_close(a[i, :t], b[0], atol=1e-4, rtol=1e-4)
                assert not a[i, t:].any()
    # windows of max_fbank_frames (a multiple of 4) add up to the whole clip's frames
    windowed = build_model("tiny", layers=2, frame_rate=25, max_fbank_frames=200).eval()
    for n in (48000, 48000 + 640 * 3 + 17):
        with torch.no_grad():
            assert windowed(tone(n / 16000)[None])["hidden_states"][0].shape[1] == frames_25hz(n)
    with pytest.raises(ValueError, match="multiple of 4"):
        build_model("tiny", frame_rate=25, max_fbank_frames=202)
    with pytest.raises(ValueError, match="frame_rate must be one of"):
        build_model("tiny", frame_rate=30)


def test_checkpoint_keeps_the_rate_and_old_checkpoints_load_at_50hz(ckpt_25hz: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    assert load_model(ckpt_25hz).config.frame_rate == 25
    torch.manual_seed(0)
    path = save_checkpoint(build_model("tiny", layers=2), tmp_path / "new.safetensors")
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
    config = json.loads(metadata["config"])
    del config["frame_rate"]  # a checkpoint written before the field existed
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata={**metadata, "config": json.dumps(config)})
    model = load_model(old)
    assert model.config.frame_rate == 50 and model.downsample_rate == 320
    with torch.no_grad():
        assert model(tone(1.0)[None])["hidden_states"][0].shape[1] == 49


def test_s3prl_upstream_and_featurizer_at_25hz(ckpt_25hz: Path) -> None:
    register_s3prl_upstreams()
    from s3prl.nn import Featurizer, S3PRLUpstream

    upstream = S3PRLUpstream("usad", path_or_url=str(ckpt_25hz)).eval()
    assert upstream.downsample_rates == [640] * 3
    lens = torch.tensor([16000, 9000])
    wavs = torch.stack([tone(1.0), torch.cat([tone(9000 / 16000), torch.zeros(7000)])])
    with torch.no_grad():
        all_hs, all_lens = upstream(wavs, lens)
        # s3prl's own count, (N - 1) // 640 + 1; the model's real frames are 25 and 14
        assert all(h.shape == (2, 25, 192) and n.tolist() == [25, 15] for h, n in zip(all_hs, all_lens))
        featurizer = Featurizer(upstream)
        assert featurizer.downsample_rate == 640
        feats, feat_lens = featurizer(all_hs, all_lens)
    assert feats.shape == (2, 25, 192) and feat_lens.tolist() == [25, 15]


@pytest.mark.parametrize("lengths", [[400, 719], [720, 1039, 1040], [16000, 16319, 16320, 16399, 16400]])
def test_legacy_featurizer_frame_counts_at_25hz(ckpt_25hz: Path, lengths: list[int]) -> None:
    from s3prl.upstream.interfaces import Featurizer

    expert = usad(str(ckpt_25hz)).eval()
    assert expert.get_downsample_rates("hidden_states") == 640
    featurizer = Featurizer(expert, upstream_device="cpu")
    assert featurizer.downsample_rate == 640
    wavs = [torch.randn(n) * 0.1 for n in lengths]
    with torch.no_grad():
        features = featurizer(wavs, expert(wavs))  # asserts |frames - round(N / 640)| < 5 inside
    model_frames = max(frames_25hz(n) for n in lengths)
    assert [f.shape[0] for f in features] == [min(round(n / 640), model_frames) for n in lengths]


def test_25hz_frame_count_within_featurizer_tolerance_for_all_lengths() -> None:
    samples = torch.arange(400, 16000 * 40)
    frames = ConvSubsampling.output_lengths(num_fbank_frames(samples), 4)
    assert torch.equal(frames, (samples - 400) // 640 + 1)
    diff = torch.round(samples / 640) - frames
    assert int(diff.min()) >= 0 and int(diff.max()) <= 1


def test_feature_cache_at_25hz(ckpt_25hz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FEATURE_CACHE_ENV, raising=False)
    plain = usad(str(ckpt_25hz)).eval()
    monkeypatch.setenv(FEATURE_CACHE_ENV, "64")
    cached = usad(str(ckpt_25hz)).eval()
    wavs = [tone(1.0, 300.0), tone(0.61, 500.0)]
    with torch.no_grad():
        for _ in range(2):  # the second pass is served from the cache
            want, got = plain(wavs), cached(wavs)
            for a, b in zip(want["hidden_states"], got["hidden_states"]):
                assert a.shape == b.shape == (2, 25, 192)
                for i, w in enumerate(wavs):
                    n = frames_25hz(len(w))
                    torch.testing.assert_close(a[i, :n], b[i, :n], atol=1e-5, rtol=1e-5)
    assert cached.cache.hits == 2 and cached.cache.misses == 2


@pytest.mark.parametrize("num_samples", [400, 1039, 1040, 16001, 32123])
def test_hear_timestamps_at_25hz(ckpt_25hz: Path, num_samples: int) -> None:
    model = hear_api.load_model(str(ckpt_25hz))
    audio = torch.stack([tone(num_samples / 16000, 300.0), tone(num_samples / 16000, 900.0)])
    emb, ts = hear_api.get_timestamp_embeddings(audio, model)
    frames = frames_25hz(num_samples)
    assert emb.shape == (2, frames, 192) and ts.shape == (2, frames)
    want = (torch.arange(frames, dtype=torch.float64) * 640 + 200) / 16  # centre sample / 16 samples per ms
    assert torch.equal(ts[0].double(), want) and torch.equal(ts[1], ts[0])
    assert ts[0, 0] == 12.5 and (frames == 1 or float(ts[0, 1] - ts[0, 0]) == 40.0)


def test_25hz_timestamp_is_the_centre_of_the_frame_receptive_field(ckpt_25hz: Path) -> None:
    """Measured: the samples frame j's conv frontend output depends on are centred on its timestamp."""
    model = hear_api.load_model(str(ckpt_25hz))
    wav = tone(0.5, 440.0).requires_grad_(True)
    feats = fbank(wav).unsqueeze(0)
    out, _ = model.encoder.subsampling(feats, torch.tensor([feats.shape[1]]))
    _, ts = hear_api.get_timestamp_embeddings(wav.detach()[None], model)
    probe = torch.randn(out.shape[-1], generator=torch.Generator().manual_seed(0))
    for j in (3, 5, 6):
        (grad,) = torch.autograd.grad(out[0, j] @ probe, wav, retain_graph=True)
        support = torch.nonzero(grad != grad[-1]).squeeze(1)
        first, last = int(support[0]), int(support[-1])
        assert last - first + 1 <= 6 * 160 + 400  # fbank frames 4j-3 .. 4j+3
        centre_ms = (first + last + 1) / 2 / 16
        assert abs(centre_ms - float(ts[0, j])) <= 1 / 16, (j, first, last, float(ts[0, j]))
