"""Teachers: random checkpoints written in the ORIGINAL formats, read by the real loading code."""
from __future__ import annotations

import fractions
from pathlib import Path

import pytest
import torch

from conftest import tone
from usad_upstream.teachers import build_teacher
from usad_upstream.teachers.atst import (
    CHUNK_FRAMES, DB_MAX, DB_MIN, TOP_DB, ATSTFrameEncoder, load_atst_frame,
)
from usad_upstream.teachers.fixtures import write_atst_checkpoint, write_wavlm_checkpoint

SMALL_WAVLM = dict(
    encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=2,
    conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", conv_pos=16, conv_pos_groups=4,
)


@pytest.fixture(scope="module")
def atst_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_atst_checkpoint(tmp_path_factory.mktemp("atst") / "atstframe_small.ckpt", dim=128, depth=2, mlp_hidden=64)


@pytest.fixture(scope="module")
def wavlm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wavlm_checkpoint(tmp_path_factory.mktemp("wavlm") / "WavLM-small.pt", **SMALL_WAVLM)


def batch(*seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    wavs = [tone(s, freq=200.0 + 100 * i) for i, s in enumerate(seconds)]
    lens = torch.tensor([len(w) for w in wavs])
    out = torch.zeros(len(wavs), int(lens.max()))
    for i, w in enumerate(wavs):
        out[i, : len(w)] = w
    return out, lens


def assert_padding_aware(teacher, wavs: torch.Tensor, lens: torch.Tensor) -> None:
    together = teacher(wavs, lens)
    for i, n in enumerate(lens.tolist()):
        alone = teacher(wavs[i : i + 1, :n], lens[i : i + 1])
        t = int(alone.lengths[0])
        assert int(together.lengths[i]) == t
        for a, b in zip(alone.layers, together.layers):
            torch.testing.assert_close(b[i, :t], a[0], atol=1e-4, rtol=1e-4)
            if b.shape[1] > t:
                assert b[i, t:].abs().max() == 0


def test_atst_base_has_the_released_parameter_count() -> None:
    with torch.device("meta"):
        encoder = ATSTFrameEncoder()
    assert sum(p.numel() for p in encoder.parameters()) == 85_419_264
    assert encoder.pos_embed.shape == (1, 251, 768)
    assert encoder.blocks[0].attn.qkv.bias is None


def test_atst_loads_teacher_branch_of_lightning_checkpoint(atst_ckpt: Path) -> None:
    ckpt = torch.load(atst_ckpt, weights_only=True)
    assert any(k.startswith("model.student.predictor.") for k in ckpt["state_dict"])
    encoder = load_atst_frame(atst_ckpt)
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(value, ckpt["state_dict"][f"model.teacher.encoder.{name}"], rtol=0, atol=0)
    student = ckpt["state_dict"]["model.student.encoder.blocks.0.attn.qkv.weight"]
    assert not torch.equal(encoder.blocks[0].attn.qkv.weight, student)
    assert (encoder.config.dim, encoder.config.depth, encoder.config.heads) == (128, 2, 2)


def test_atst_shapes_targets_and_frame_rate(atst_ckpt: Path) -> None:
    teacher = build_teacher({"kind": "atst_frame", "path": str(atst_ckpt)})
    hidden = build_teacher({"kind": "atst_frame", "path": str(atst_ckpt), "target": "hidden_states"})
    assert (teacher.frame_rate, teacher.num_layers, teacher.dim) == (25.0, 2, 128)
    wavs, lens = batch(2.0)
    captured: dict[str, list[torch.Tensor]] = {"mlp": [], "block": []}
    for block in teacher.encoder.blocks:
        block.mlp.register_forward_hook(lambda m, i, o: captured["mlp"].append(o))
        block.register_forward_hook(lambda m, i, o: captured["block"].append(o[0]))
    out = teacher(wavs, lens)
    mel_frames = 32000 // 160 + 1
    assert int(out.lengths[0]) == mel_frames // 4 == 50
    assert [tuple(x.shape) for x in out.layers] == [(1, 50, 128)] * 2
    for got, ffn in zip(out.layers, captured["mlp"]):
        torch.testing.assert_close(got, ffn[:, :50])
    norm = teacher.encoder.norm_frame
    for got, block_out in zip(hidden(wavs, lens).layers, captured["block"]):
        torch.testing.assert_close(got, norm(block_out[:, :50]))


def test_atst_padding_aware(atst_ckpt: Path) -> None:
    teacher = build_teacher({"kind": "atst_frame", "path": str(atst_ckpt)})
    assert_padding_aware(teacher, *batch(11.5, 3.0, 0.3))


def test_atst_chunks_long_clips_like_the_official_extraction(atst_ckpt: Path) -> None:
    teacher = build_teacher({"kind": "atst_frame", "path": str(atst_ckpt)})
    wavs, lens = batch(12.0)
    mel, mel_lens = teacher.frontend(wavs, lens)
    assert mel.shape == (1, 64, 1201) and int(mel_lens[0]) == 1201
    layers, tokens = teacher.encode(mel, mel_lens)
    assert int(tokens[0]) == 250 + 200 // 4 == layers[0].shape[1]
    first, _ = teacher.encoder(mel[:, :, :CHUNK_FRAMES], torch.tensor([CHUNK_FRAMES]))
    second, _ = teacher.encoder(mel[:, :, CHUNK_FRAMES:], torch.tensor([200]))
    for got, a, b in zip(layers, first, second):
        torch.testing.assert_close(got, torch.cat([a, b], dim=1))
    times = teacher.token_times(len(wavs[0]))
    assert len(times) == 300
    assert float(times[0]) == pytest.approx(0.015)
    assert float(times[250]) == pytest.approx((CHUNK_FRAMES + 1.5) * 0.01)  # no 10 ms drift


def test_atst_db_floor_is_per_clip(atst_ckpt: Path) -> None:
    teacher = build_teacher({"kind": "atst_frame", "path": str(atst_ckpt)})
    loud, quiet = tone(10.5), 1e-6 * tone(2.0, freq=300.0)
    clip = torch.cat([loud, quiet])[None]
    mel, _ = teacher.frontend(clip, torch.tensor([clip.shape[1]]))
    db = (mel + 1) / 2 * (DB_MAX - DB_MIN) + DB_MIN
    assert float(db.min()) == pytest.approx(float(db.max()) - TOP_DB, abs=1e-3)
    tail = db[..., 1060:]  # the quiet part sits on the floor set by the loud part of the same clip
    assert float(tail.max()) == pytest.approx(float(db.max()) - TOP_DB, abs=1e-3)
    alone, _ = teacher.frontend(quiet[None], torch.tensor([len(quiet)]))
    assert float(alone.min()) < float(mel.min()) - 0.5


def test_wavlm_matches_s3prl_expert_and_selects_targets(wavlm_ckpt: Path) -> None:
    from s3prl.upstream.wavlm.expert import UpstreamExpert

    hidden = build_teacher({"kind": "wavlm", "path": str(wavlm_ckpt), "target": "hidden_states"})
    ffn = build_teacher({"kind": "wavlm", "path": str(wavlm_ckpt)})
    assert (ffn.frame_rate, ffn.num_layers, ffn.dim) == (50.0, 2, 64)
    wavs, lens = batch(1.5)
    expert = UpstreamExpert(str(wavlm_ckpt)).eval()
    with torch.no_grad():
        reference = expert([wavs[0]])["hidden_states"]
    out = hidden(wavs, lens)
    assert int(out.lengths[0]) == out.layers[0].shape[1] == reference[1].shape[1] == 74  # ~ 24000 / 320
    for got, ref in zip(out.layers, reference[1:]):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    fc2_out = []
    for layer in ffn.model.encoder.layers:
        layer.fc2.register_forward_hook(lambda m, i, o: fc2_out.append(o.transpose(0, 1)))
    targets = ffn(wavs, lens).layers
    for got, ref, h in zip(targets, fc2_out, out.layers):
        torch.testing.assert_close(got, ref)
        assert not torch.allclose(got, h)


@pytest.mark.parametrize("overrides", [{}, {"extractor_mode": "layer_norm", "normalize": True, "layer_norm_first": True}])
def test_wavlm_padding_aware(tmp_path: Path, overrides: dict) -> None:
    path = write_wavlm_checkpoint(tmp_path / "w.pt", **{**SMALL_WAVLM, **overrides})
    for target in ("ffn", "hidden_states"):
        teacher = build_teacher({"kind": "wavlm", "path": str(path), "target": target})
        assert_padding_aware(teacher, *batch(1.3, 0.41, 0.9))


def test_wrong_files_give_clear_errors(tmp_path: Path, atst_ckpt: Path, wavlm_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="atst_frame"):
        build_teacher({"kind": "wavlm", "path": str(atst_ckpt)})
    with pytest.raises(ValueError, match="wavlm"):
        build_teacher({"kind": "atst_frame", "path": str(wavlm_ckpt)})
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        build_teacher({"kind": "atst_frame", "path": str(junk)})
    with pytest.raises(ValueError, match="needs 'path'"):
        build_teacher({"kind": "wavlm"})
    with pytest.raises(ValueError, match="not found"):
        build_teacher({"kind": "wavlm", "path": str(tmp_path / "missing.pt")})
    with pytest.raises(ValueError, match="unknown teacher kind"):
        build_teacher({"kind": "beats", "path": str(junk)})
    with pytest.raises(ValueError, match="unknown fields"):
        build_teacher({"kind": "usad", "path": str(junk), "layers": [3]})
    with pytest.raises(ValueError, match="unknown teacher target"):
        build_teacher({"kind": "wavlm", "path": str(wavlm_ckpt), "target": "attention"})

    ckpt = torch.load(atst_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["avg_blocks"] = 8
    torch.save(ckpt, tmp_path / "d2v.ckpt")
    with pytest.raises(ValueError, match="avg_blocks"):
        load_atst_frame(tmp_path / "d2v.ckpt")
    ckpt["hyper_parameters"].update(avg_blocks=0, lr_scale=fractions.Fraction(1, 3))
    torch.save(ckpt, tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match="trust_pickle"):
        load_atst_frame(tmp_path / "pickled.ckpt")
    assert build_teacher({"kind": "atst_frame", "path": str(tmp_path / "pickled.ckpt"), "trust_pickle": True}).dim == 128


def test_s3prl_upstream_teacher() -> None:
    teacher = build_teacher({"kind": "s3prl", "name": "fbank"})
    assert (teacher.frame_rate, teacher.num_layers) == (100.0, 1)
    wavs, lens = batch(1.0, 0.5)
    out = teacher(wavs, lens)
    assert out.lengths.tolist() == [100, 50] and out.layers[0].shape == (2, 100, teacher.dim)
    assert out.layers[0][1, 50:].abs().max() == 0
    with pytest.raises(ValueError, match="unknown s3prl upstream"):
        build_teacher({"kind": "s3prl", "name": "no_such_upstream"})


def test_usad_teacher(tiny_checkpoint: Path) -> None:
    from usad_upstream import load_model

    teacher = build_teacher({"kind": "usad", "path": str(tiny_checkpoint)})
    model = load_model(tiny_checkpoint)
    wavs, lens = batch(1.0, 0.6)
    out = teacher(wavs, lens)
    with torch.inference_mode():
        ref = model(wavs, lens)
    assert teacher.frame_rate == 50.0 and out.lengths.tolist() == ref["lengths"].tolist() == [49, 29]
    for got, want in zip(out.layers, ref["ffn"]):
        torch.testing.assert_close(got, want)
    hidden = build_teacher({"kind": "usad", "path": str(tiny_checkpoint), "target": "hidden_states"})
    torch.testing.assert_close(hidden(wavs, lens).layers[-1], ref["hidden_states"][-1])
