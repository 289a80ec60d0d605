import re

import pytest
import torch
from safetensors.torch import save_file

from usad_upstream import build_model, load_model, save_checkpoint
from usad_upstream.checkpoint import RELEASED_KEY_RULES, CheckpointError, infer_config


def test_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path):
    torch.manual_seed(1)
    model = build_model("tiny", layers=2, dropout=0.0).eval()
    path = save_checkpoint(model, tmp_path / "sub" / "student.safetensors")
    loaded = load_model(path)
    assert loaded.config == model.config and not loaded.training
    wav = torch.randn(1, 8000) * 0.1
    with torch.inference_mode():
        assert torch.equal(loaded(wav)["x"], model(wav)["x"])
    assert [p.name for p in path.parent.iterdir()] == ["student.safetensors"]  # no temp file left
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others, not mkstemp's 0600


def test_missing_file_says_how_to_get_one(tmp_path):
    with pytest.raises(CheckpointError, match="usad init"):
        load_model(tmp_path / "nope.safetensors")


def test_truncated_file_fails_clearly(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(bad)


def test_garbage_and_torch_zip_files_fail_clearly(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=str(garbage.name)):
        load_model(garbage)
    run_ckpt = tmp_path / "run.pt"
    torch.save({"student": {}}, run_ckpt)
    with pytest.raises(CheckpointError, match="usad export"):
        load_model(run_ckpt)


def test_wrong_kind_of_safetensors_fails_clearly(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a USAD student checkpoint"):
        load_model(other)


def test_newer_format_version_is_refused(tmp_path):
    path = save_checkpoint(build_model("tiny", layers=1), tmp_path / "a.safetensors", extra={"format_version": "9"})
    with pytest.raises(CheckpointError, match="format version '9'"):
        load_model(path)


def _to_released_names(name: str) -> str:
    """Inverse of the key map for the ESPnet-style names the rules expect (test helper)."""
    inverse = [
        (r"^subsampling\.conv1\.", "encoder.frontend.conv.0."),
        (r"^subsampling\.conv2\.", "encoder.frontend.conv.2."),
        (r"^subsampling\.proj\.", "encoder.frontend.out."),
        (r"^subsampling\.norm\.", "encoder.frontend.norm."),
        (r"^pos_conv\.convs\.(\d+)\.", r"encoder.pos_conv.\1.0."),
        (r"^blocks\.(\d+)\.", r"encoder.layers.\1."),
        (r"\.attn\.q_proj\.", ".self_attn.linear_q."),
        (r"\.attn\.k_proj\.", ".self_attn.linear_k."),
        (r"\.attn\.v_proj\.", ".self_attn.linear_v."),
        (r"\.attn\.out_proj\.", ".self_attn.linear_out."),
        (r"\.attn\.pos_proj\.", ".self_attn.linear_pos."),
        (r"\.attn\.pos_bias_([uv])$", r".self_attn.pos_bias_\1"),
        (r"\.ffn\.fc1\.", ".feed_forward.w_1."),
        (r"\.ffn\.fc2\.", ".feed_forward.w_2."),
        (r"\.attn_norm\.", ".norm_mha."),
        (r"\.ffn_norm\.", ".norm_ff."),
        (r"^final_norm\.", "encoder.after_norm."),
    ]
    for pattern, replacement in inverse:
        name = re.sub(pattern, replacement, name)
    return "model." + name


def test_released_layout_is_mapped_and_config_inferred(tmp_path):
    assert RELEASED_KEY_RULES  # the map exists; the real header is still unverified (README)
    model = build_model("tiny", layers=3)
    state = {_to_released_names(k): v.contiguous() for k, v in model.state_dict().items()}
    assert all(k.startswith("model.") for k in state)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    loaded = load_model(path)
    assert (loaded.config.dim, loaded.config.layers, loaded.config.heads) == (192, 3, 4)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_infer_config_names_presets():
    with torch.device("meta"):
        state = build_model("small").state_dict()
    assert infer_config(state).name == "small"
    with pytest.raises(CheckpointError, match="cannot infer"):
        infer_config({"x": torch.zeros(1)})
