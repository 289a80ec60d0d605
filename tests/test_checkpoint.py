import pytest
import torch
from safetensors.torch import save_file

from usad_upstream import build_model, load_model, save_checkpoint
from usad_upstream.checkpoint import FORMAT, FORMAT_VERSION, CheckpointError


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


def test_a_snapshot_weights_file_points_to_its_directory_and_usad_convert(tmp_path):
    """The keys-start-with-`model.` guess map is gone: such a file is named for what it is."""
    state = {f"model.{k}": v.contiguous() for k, v in build_model("tiny", layers=1).state_dict().items()}
    path = tmp_path / "snap" / "model.safetensors"
    path.parent.mkdir()
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"weights file of a Hugging Face snapshot.*usad convert .*snap -o"):
        load_model(path)


def test_checkpoints_written_before_the_release_flags_still_load(tmp_path):
    """Configs without ffn_residual_scale / position_encoding / attention_scale get today's model."""
    import json

    torch.manual_seed(2)
    model = build_model("tiny", layers=1, dropout=0.0).eval()
    old = {k: v for k, v in model.config.to_dict().items()
           if k not in ("ffn_residual_scale", "position_encoding", "attention_scale")}
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(old)})
    loaded = load_model(path)
    assert (loaded.config.ffn_residual_scale, loaded.config.position_encoding, loaded.config.attention_scale) == (
        1.0, "relative", "head_dim")
    wav = torch.randn(1, 8000) * 0.1
    with torch.inference_mode():
        assert torch.equal(loaded(wav)["x"], model(wav)["x"])
