"""USAD 2.0 teachers (MuQ, Whisper, AF-Whisper): random checkpoints in the real on-disk formats,
written with the packages' own classes, read by our loaders and checked against the packages' own
forward passes."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import tone as clip
from test_teachers import assert_padding_aware, batch
from usad_upstream.compat import import_muq, import_torchaudio
from usad_upstream.teachers import KINDS, build_teacher
from usad_upstream.teachers.fixtures import write_muq_checkpoint, write_whisper_checkpoint

TIGHT = dict(atol=1e-5, rtol=1e-5)
SMALL_MUQ = dict(encoder_dim=64, encoder_depth=2, conv_dim=8)
SMALL_MUQ_W2V2 = dict(num_attention_heads=2, intermediate_size=128)
SMALL_WHISPER = dict(n_audio_state=64, n_audio_head=2, n_audio_layer=3, n_text_state=64, n_text_head=2, n_text_layer=1)
WINDOW = 480_000  # 30 s at 16 kHz


@pytest.fixture(scope="module")
def muq_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_muq_checkpoint(tmp_path_factory.mktemp("muq") / "MuQ-small", w2v2_overrides=SMALL_MUQ_W2V2, **SMALL_MUQ)


@pytest.fixture(scope="module")
def whisper_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("whisper")
    return {
        "openai": write_whisper_checkpoint(root / "small-v3.pt", format="openai", **SMALL_WHISPER),
        "transformers": write_whisper_checkpoint(root / "whisper-small-v3", format="transformers", **SMALL_WHISPER),
        "af3": write_whisper_checkpoint(root / "audio-flamingo-3-small", format="af3", **SMALL_WHISPER),
    }


# --- MuQ -----------------------------------------------------------------------------------------


def package_muq(folder: Path) -> torch.nn.Module:
    """The muq package's own loader, as its README calls it."""
    return import_muq().MuQ.from_pretrained(str(folder)).eval()


def test_muq_checkpoint_is_the_hub_mixin_folder(muq_dir: Path) -> None:
    assert {"config.json", "model.safetensors"} <= {p.name for p in muq_dir.iterdir()}  # and the mixin's README.md
    config = json.loads((muq_dir / "config.json").read_text())
    assert (config["label_rate"], config["encoder_dim"], config["encoder_depth"]) == (25, 64, 2)
    assert config["w2v2_config"]["position_embeddings_type"] == "rotary"
    reference = package_muq(muq_dir)
    teacher = build_teacher({"kind": "muq", "path": str(muq_dir)})
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(teacher.model.state_dict()[name], value, rtol=0, atol=0)
    bn = teacher.model.model.conv.conv[0].bn1
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # batch norms are not identities
    other = write_muq_checkpoint(muq_dir.parent / "seed1", seed=1, w2v2_overrides=SMALL_MUQ_W2V2, **SMALL_MUQ)
    assert not torch.equal(load_file(other / "model.safetensors")["model.linear.weight"], reference.model.linear.weight)


def test_muq_matches_the_package_forward_at_24k(muq_dir: Path) -> None:
    teacher = build_teacher({"kind": "muq", "path": str(muq_dir)})
    assert (teacher.frame_rate, teacher.num_layers, teacher.dim) == (25.0, 2, 64)
    reference = package_muq(muq_dir)
    wav = clip(1.7)
    audio = import_torchaudio().functional.resample(wav[None], 16000, 24000)
    assert audio.shape[1] == 40800
    with torch.no_grad():
        expected = reference(audio, output_hidden_states=True)
    out = teacher(wav[None], torch.tensor([len(wav)]))
    assert len(expected.hidden_states) == 3 and int(out.lengths[0]) == expected.last_hidden_state.shape[1] == 43
    for got, ref in zip(out.layers, expected.hidden_states[1:]):
        torch.testing.assert_close(got[0], ref[0], **TIGHT)
    torch.testing.assert_close(out.layers[-1][0], expected.last_hidden_state[0], **TIGHT)


def test_muq_frame_counts_follow_the_package(muq_dir: Path) -> None:
    teacher = build_teacher({"kind": "muq", "path": str(muq_dir)})
    reference = package_muq(muq_dir)
    for n in (683, 1000, 15999, 16000, 16161, 23987):
        audio = torch.randn(1, int(teacher.resampled_length(torch.tensor(n))))
        with torch.no_grad():
            frames = reference(audio).last_hidden_state.shape[1]
        assert int(teacher.num_frames(torch.tensor(audio.shape[1]))) == frames, n
    assert int(teacher(clip(1.0)[None], torch.tensor([16000])).lengths[0]) == 25


def test_muq_padding_aware(muq_dir: Path) -> None:
    teacher = build_teacher({"kind": "muq", "path": str(muq_dir)})
    wavs, lens = batch(1.3, 0.5, 1.3, 0.9)  # two of one length run together
    assert_padding_aware(teacher, wavs, lens)
    garbage = wavs.clone()
    garbage[1, int(lens[1]) :] = 1.0  # whatever sits in the padding
    torch.testing.assert_close(teacher(garbage, lens).layers[-1], teacher(wavs, lens).layers[-1])


def test_muq_keeps_the_callers_rng(muq_dir: Path) -> None:
    import random

    torch.manual_seed(7)
    random.seed(7)
    build_teacher({"kind": "muq", "path": str(muq_dir)})
    after = (torch.rand(3), random.random())
    torch.manual_seed(7)
    random.seed(7)
    assert torch.equal(after[0], torch.rand(3)) and after[1] == random.random()


def test_muq_bad_inputs(muq_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MuQ checkpoint folder not found"):
        build_teacher({"kind": "muq", "path": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="folders"):
        build_teacher({"kind": "muq", "path": str(muq_dir / "model.safetensors")})
    with pytest.raises(ValueError, match="needs 'path'"):
        build_teacher({"kind": "muq"})
    with pytest.raises(ValueError, match="hidden states only"):
        build_teacher({"kind": "muq", "path": str(muq_dir), "target": "ffn"})
    with pytest.raises(ValueError, match="unknown fields"):
        build_teacher({"kind": "muq", "path": str(muq_dir), "domain": "music"})  # the trainer strips domain

    def variant(name: str, edit_config=None, edit_state=None) -> Path:  # type: ignore[no-untyped-def]
        folder = tmp_path / name
        folder.mkdir()
        config = json.loads((muq_dir / "config.json").read_text())
        state = load_file(muq_dir / "model.safetensors")
        if edit_config:
            edit_config(config)
        if edit_state:
            edit_state(state)
        (folder / "config.json").write_text(json.dumps(config))
        save_file(state, folder / "model.safetensors")
        return folder

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((muq_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="no model.safetensors"):
        build_teacher({"kind": "muq", "path": str(no_weights)})
    lost = variant("lost_layer", edit_state=lambda s: [s.pop(k) for k in list(s) if k.startswith("model.conformer.layers.1.ffn2")])
    with pytest.raises(ValueError, match=r"model.safetensors: MuQ weights do not match config.json: missing \['model.conformer.layers.1.ffn2"):
        build_teacher({"kind": "muq", "path": str(lost)})
    deeper = variant("deeper", edit_config=lambda c: c.update(encoder_depth=3))
    with pytest.raises(ValueError, match="missing"):
        build_teacher({"kind": "muq", "path": str(deeper)})
    wider = variant("wider", edit_config=lambda c: c.update(encoder_dim=96))
    with pytest.raises(ValueError, match="do not fit the muq package's model"):
        build_teacher({"kind": "muq", "path": str(wider)})
    flash = variant("flash", edit_config=lambda c: c.update(is_flash=True))
    with pytest.raises(ValueError, match="is_flash"):
        build_teacher({"kind": "muq", "path": str(flash)})
    no_stat = variant("no_stat", edit_config=lambda c: c.update(stat={}))
    with pytest.raises(ValueError, match="melspec_2048_mean"):
        build_teacher({"kind": "muq", "path": str(no_stat)})
    wavlm = tmp_path / "wavlm"
    wavlm.mkdir()
    (wavlm / "config.json").write_text(json.dumps({"model_type": "wavlm", "hidden_size": 768}))
    save_file({"x": torch.zeros(1)}, wavlm / "model.safetensors")
    with pytest.raises(ValueError, match="not a MuQ config"):
        build_teacher({"kind": "muq", "path": str(wavlm)})

    def old_weight_norm(state: dict) -> None:  # torch < 2.1 names of the unused pos_conv_embed
        for key in [k for k in state if k.startswith("model.conformer.pos_conv_embed.conv.parametrizations")]:
            state[key.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")] = state.pop(key)

    renamed = variant("old_names", edit_state=old_weight_norm)
    assert build_teacher({"kind": "muq", "path": str(renamed)}).dim == 64

    teacher = build_teacher({"kind": "muq", "path": str(muq_dir)})
    with pytest.raises(ValueError, match="too short for MuQ: item 1 has 682 samples, the minimum is 683"):
        teacher(torch.zeros(2, 1000), torch.tensor([1000, 682]))
    assert int(teacher(torch.zeros(1, 683), torch.tensor([683])).lengths[0]) == 1


def test_import_muq_needs_no_x_clip() -> None:
    """muq's package init imports MuQ-MuLan -> x_clip -> torchvision; the SSL model must not."""
    with mock.patch.dict(sys.modules):  # every module imported here is forgotten afterwards
        for name in [m for m in sys.modules if m == "muq" or m.startswith("muq.")]:
            del sys.modules[name]
        sys.modules["x_clip"] = sys.modules["torchvision"] = None  # None: importing them fails
        ssl = import_muq()
        from muq import MuQ, MuQConfig

        assert MuQ is ssl.MuQ and MuQConfig is ssl.MuQConfig
        with pytest.raises(ImportError, match="x_clip"):
            import muq.muq_mulan  # noqa: F401


def test_muq_runs_beside_the_hear_tensorflow_stand_in(muq_dir: Path) -> None:
    """Under heareval (hear_api.teacher with a MuQ spec) `tensorflow` is compat's stand-in, and
    einops, seeing it in sys.modules, asks it for tf.Tensor before it tries torch."""
    import einops._backends as backends

    from usad_upstream import compat

    teacher = build_teacher({"kind": "muq", "path": str(muq_dir)})
    wavs, lens = batch(0.6)
    expected = teacher(wavs, lens).layers[-1]
    with mock.patch.dict(sys.modules, {"tensorflow": compat._tensorflow_stand_in()}), \
            mock.patch.dict(backends._type2backend, clear=True), mock.patch.dict(backends._loaded_backends, clear=True):
        torch.testing.assert_close(teacher(wavs, lens).layers[-1], expected, rtol=0, atol=0)


# --- Whisper -------------------------------------------------------------------------------------


def openai_reference(path: Path, wav: torch.Tensor) -> list[torch.Tensor]:
    """whisper.load_model + the README's pad_or_trim / log_mel_spectrogram; every block's output,
    the last one through ln_post (the encoder's output)."""
    import whisper

    model = whisper.load_model(str(path), device="cpu")
    blocks: list[torch.Tensor] = []
    for block in model.encoder.blocks[:-1]:
        block.register_forward_hook(lambda m, i, o: blocks.append(o))
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(wav), model.dims.n_mels)
    with torch.no_grad():
        final = model.embed_audio(mel[None])
    return [*blocks, final]


def transformers_reference(folder: Path, wav: torch.Tensor) -> list[torch.Tensor]:
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    model, info = WhisperForConditionalGeneration.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    features = WhisperFeatureExtractor.from_pretrained(str(folder))(wav.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        return list(model.eval().model.encoder(features.input_features, output_hidden_states=True).hidden_states[1:])


def af3_reference(folder: Path, wav: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """transformers' Qwen2AudioEncoder (AF-Whisper's architecture) on the audio tower's shard, with
    the attention mask Qwen2-Audio builds from the feature extractor's own mask."""
    from transformers import Qwen2AudioEncoder, Qwen2AudioEncoderConfig, WhisperFeatureExtractor

    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shard = index["audio_tower.conv1.weight"]
    with safe_open(str(folder / shard), framework="pt") as handle:
        state = {k[len("audio_tower.") :]: handle.get_tensor(k) for k in handle.keys() if k.startswith("audio_tower.")}
    audio = json.loads((folder / "config.json").read_text())["audio_config"]
    config = Qwen2AudioEncoderConfig(
        num_mel_bins=audio["num_mel_bins"], d_model=audio["hidden_size"], encoder_layers=audio["num_hidden_layers"],
        encoder_attention_heads=audio["num_attention_heads"], encoder_ffn_dim=audio["intermediate_size"],
    )
    encoder = Qwen2AudioEncoder(config).eval()
    encoder.load_state_dict(state, strict=True)
    features = WhisperFeatureExtractor.from_pretrained(str(folder))(
        wav.numpy(), sampling_rate=16000, return_tensors="pt", return_attention_mask=True
    )
    conv_lens, out_lens = encoder._get_feat_extract_output_lengths(features.attention_mask.sum(-1))
    mask = torch.zeros(1, 1, 1500, 1500)
    mask[..., int(conv_lens[0]) :] = float("-inf")
    with torch.no_grad():
        out = encoder(features.input_features, attention_mask=mask, output_hidden_states=True)
    pool = encoder.avg_pooler
    blocks = [pool(h.transpose(1, 2)).transpose(1, 2) for h in out.hidden_states[1:-1]]  # outputs of blocks 1..L-1
    return [*blocks, out.last_hidden_state], int(out_lens[0])


def test_whisper_checkpoints_are_the_released_formats(whisper_ckpts: dict[str, Path]) -> None:
    ckpt = torch.load(whisper_ckpts["openai"], weights_only=True)
    assert set(ckpt) == {"dims", "model_state_dict"} and ckpt["dims"]["n_mels"] == 128 and ckpt["dims"]["n_audio_ctx"] == 1500
    assert ckpt["model_state_dict"]["encoder.conv1.weight"].dtype == torch.float16
    assert any(k.startswith("decoder.") for k in ckpt["model_state_dict"])
    folder = whisper_ckpts["transformers"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["WhisperForConditionalGeneration"]
    af3 = whisper_ckpts["af3"]
    index = json.loads((af3 / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) == 2 and any(k.startswith("language_model.") for k in index)
    for key, shard in index.items():
        with safe_open(str(af3 / shard), framework="pt") as handle:
            assert key in handle.keys()
    with pytest.raises(ValueError, match="unknown Whisper checkpoint format"):
        write_whisper_checkpoint(af3.parent / "x", format="hf")


def test_whisper_openai_matches_the_package_forward(whisper_ckpts: dict[str, Path]) -> None:
    teacher = build_teacher({"kind": "whisper", "path": str(whisper_ckpts["openai"])})
    assert (teacher.frame_rate, teacher.num_layers, teacher.dim) == (50.0, 3, 64)
    wav = clip(2.1)[: 202 * 160 + 5]  # 203 mel frames centred inside the audio
    out = teacher(wav[None], torch.tensor([len(wav)]))
    frames = (203 - 1) // 2 + 1
    assert int(out.lengths[0]) == out.layers[0].shape[1] == frames == 102
    for got, ref in zip(out.layers, openai_reference(whisper_ckpts["openai"], wav)):
        assert ref.shape[1] == 1500
        torch.testing.assert_close(got[0], ref[0, :frames], **TIGHT)


def test_whisper_transformers_matches_the_package_forward(whisper_ckpts: dict[str, Path], tmp_path: Path) -> None:
    from transformers import WhisperModel

    teacher = build_teacher({"kind": "whisper", "path": str(whisper_ckpts["transformers"])})
    assert (teacher.frame_rate, teacher.num_layers, teacher.dim) == (50.0, 3, 64)
    wav = clip(1.41)
    out = teacher(wav[None], torch.tensor([len(wav)]))
    assert int(out.lengths[0]) == 71
    reference = transformers_reference(whisper_ckpts["transformers"], wav)
    assert len(reference) == 3
    for got, ref in zip(out.layers, reference):
        torch.testing.assert_close(got[0], ref[0, :71], **TIGHT)
    # a WhisperModel folder (keys under `encoder.`, no preprocessor_config.json) reads the same
    bare = tmp_path / "whisper-model"
    WhisperModel.from_pretrained(str(whisper_ckpts["transformers"])).save_pretrained(str(bare))
    again = build_teacher({"kind": "whisper", "path": str(bare)})
    torch.testing.assert_close(again(wav[None], torch.tensor([len(wav)])).layers[-1], out.layers[-1], **TIGHT)


def test_af_whisper_matches_qwen2_audio_encoder(whisper_ckpts: dict[str, Path]) -> None:
    teacher = build_teacher({"kind": "whisper", "path": str(whisper_ckpts["af3"])})  # variant from audio_config
    assert (teacher.frame_rate, teacher.num_layers, teacher.dim) == (25.0, 3, 64)
    explicit = build_teacher({"kind": "whisper", "path": str(whisper_ckpts["af3"]), "key_prefix": "audio_tower.", "variant": "af_whisper"})
    wav = clip(2.37)
    out = teacher(wav[None], torch.tensor([len(wav)]))
    reference, frames = af3_reference(whisper_ckpts["af3"], wav)
    assert int(out.lengths[0]) == frames == 59
    for got, ref in zip(out.layers, reference):
        torch.testing.assert_close(got[0], ref[0, :frames], **TIGHT)
    torch.testing.assert_close(explicit(wav[None], torch.tensor([len(wav)])).layers[-1], out.layers[-1], rtol=0, atol=0)
    plain = build_teacher({"kind": "whisper", "path": str(whisper_ckpts["af3"]), "variant": "whisper"})
    assert plain.frame_rate == 50.0  # the same weights without AF3's mask and pooling


@pytest.mark.parametrize("fmt", ["openai", "transformers", "af3"])
def test_whisper_padding_aware(whisper_ckpts: dict[str, Path], fmt: str) -> None:
    teacher = build_teacher({"kind": "whisper", "path": str(whisper_ckpts[fmt])})
    assert_padding_aware(teacher, *batch(1.6, 0.45, 1.1))


@pytest.mark.parametrize("fmt", ["openai", "af3"])
def test_whisper_chunks_long_audio_into_30s_windows(whisper_ckpts: dict[str, Path], fmt: str) -> None:
    teacher = build_teacher({"kind": "whisper", "path": str(whisper_ckpts[fmt])})
    per_window = int(30 * teacher.frame_rate)
    long = torch.cat([clip(30.0, 200.0), clip(30.0, 250.0), clip(1.3, 300.0)])
    out = teacher(long[None], torch.tensor([len(long)]))
    rest = teacher.window_frames(len(long) - 2 * WINDOW)
    assert int(out.lengths[0]) == out.layers[0].shape[1] == 2 * per_window + rest
    parts = [long[:WINDOW], long[WINDOW : 2 * WINDOW], long[2 * WINDOW :]]
    alone = [teacher(p[None], torch.tensor([len(p)])) for p in parts]
    assert [int(a.lengths[0]) for a in alone] == [per_window, per_window, rest]
    for k, got in enumerate(out.layers):
        torch.testing.assert_close(got[0], torch.cat([a.layers[k][0] for a in alone]), atol=1e-4, rtol=1e-4)
    # a last window of 200 samples: 2 mel frames, one Whisper frame, none after AF3's pooling
    tail = teacher(long[None, : WINDOW + 200], torch.tensor([WINDOW + 200]))
    assert int(tail.lengths[0]) == per_window + (1 if fmt == "openai" else 0)


def test_whisper_bad_inputs(whisper_ckpts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Whisper checkpoint not found"):
        build_teacher({"kind": "whisper", "path": str(tmp_path / "missing.pt")})
    with pytest.raises(ValueError, match="needs 'path'"):
        build_teacher({"kind": "whisper"})
    with pytest.raises(ValueError, match="hidden states only"):
        build_teacher({"kind": "whisper", "path": str(whisper_ckpts["openai"]), "target": "ffn"})
    with pytest.raises(ValueError, match="unknown Whisper variant"):
        build_teacher({"kind": "whisper", "path": str(whisper_ckpts["openai"]), "variant": "large"})
    with pytest.raises(ValueError, match="needs a transformers folder"):
        build_teacher({"kind": "whisper", "path": str(whisper_ckpts["openai"]), "variant": "af_whisper"})
    with pytest.raises(ValueError, match="unknown fields"):
        build_teacher({"kind": "whisper", "path": str(whisper_ckpts["openai"]), "weight": 1.0})
    wavlm = tmp_path / "wavlm.pt"
    torch.save({"cfg": {}, "model": {}}, wavlm)  # WavLM's layout
    with pytest.raises(ValueError, match=r"wavlm.pt: not an openai-whisper checkpoint \(no 'dims' and 'model_state_dict'; found \['cfg', 'model'\]"):
        build_teacher({"kind": "whisper", "path": str(wavlm)})
    ckpt = torch.load(whisper_ckpts["openai"], weights_only=True)
    del ckpt["model_state_dict"]["encoder.blocks.1.mlp.0.weight"]
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken.pt: Whisper encoder weights do not match.*blocks.1.mlp.0.weight"):
        build_teacher({"kind": "whisper", "path": str(tmp_path / "broken.pt")})

    folder = whisper_ckpts["af3"]
    with pytest.raises(ValueError, match="no Whisper encoder under key prefix 'sound_tower.'"):
        build_teacher({"kind": "whisper", "path": str(folder), "key_prefix": "sound_tower."})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: no config.json"):
        build_teacher({"kind": "whisper", "path": str(empty)})
    (empty / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    torch.save({}, empty / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"no model.safetensors .*found \['pytorch_model.bin'\]"):
        build_teacher({"kind": "whisper", "path": str(empty)})
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not a Whisper-class encoder"):
        build_teacher({"kind": "whisper", "path": str(bert)})
    two = tmp_path / "two_towers"
    two.mkdir()
    (two / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    tower = {k[len("audio_tower.") :]: v for k, v in load_file(folder / "model-00001-of-00002.safetensors").items()}
    save_file({**{f"a.{k}": v for k, v in tower.items()}, **{f"b.{k}": v.clone() for k, v in tower.items()}}, two / "model.safetensors")
    with pytest.raises(ValueError, match=r"found several \(\['a.', 'b.'\]\); choose one with key_prefix"):
        build_teacher({"kind": "whisper", "path": str(two)})
    assert build_teacher({"kind": "whisper", "path": str(two), "key_prefix": "b."}).frame_rate == 50.0


@pytest.mark.parametrize("fmt", ["openai", "transformers", "af3", "muq"])
def test_teachers_run_under_the_trainers_bf16_autocast(whisper_ckpts: dict[str, Path], muq_dir: Path, fmt: str) -> None:
    """The trainer runs teachers in the student's autocast; waveforms and log-mel frontends stay in
    fp32, so the targets keep bf16's ~1% precision (a bf16 waveform into MuQ gave 8%)."""
    path = muq_dir if fmt == "muq" else whisper_ckpts[fmt]
    teacher = build_teacher({"kind": "muq" if fmt == "muq" else "whisper", "path": str(path)})
    wavs, lens = batch(1.2, 0.7)
    reference = teacher(wavs, lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = teacher(wavs, lens)
    assert out.lengths.tolist() == reference.lengths.tolist()
    for got, ref in zip(out.layers, reference.layers):
        assert float((got.float() - ref).norm()) <= 0.03 * float(ref.norm())


def test_new_kinds_read_only_teacher_fields() -> None:
    """The trainer hands each spec over without its own fields (weight, domain, layers)."""
    for kind in ("muq", "whisper"):
        assert not KINDS[kind][1] & {"weight", "domain", "layers"}
