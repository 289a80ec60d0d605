"""`usad upscale`: depth up-scaling (USAD 2.0's XXLarge = XLarge's first 24 + last 24 blocks)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import tone
from downstream_recipes.cli import main
from usad_upstream import PRESETS, build_model, load_model, save_checkpoint
from usad_upstream.upscale import UpscaleError, _preset_name, parse_layers, upscale


def test_layer_specs() -> None:
    assert parse_layers("first:24,last:24", 32) == list(range(1, 25)) + list(range(9, 33))
    assert parse_layers("1-3, 5,last:1", 6) == [1, 2, 3, 5, 6]
    assert parse_layers("first:4", 4) == [1, 2, 3, 4]
    for bad, match in [("first:0", r"1 <= N <= 4"), ("last:5", r"1 <= N <= 4"), ("3-2", "increasing order"),
                       ("0", "within 1..4"), ("5", "within 1..4"), ("top:2", "cannot read 'top:2'"),
                       ("", "comma-separated"), ("first:2,,last:2", "comma-separated")]:
        with pytest.raises(UpscaleError, match=match):
            parse_layers(bad, 4)


def test_upscaled_weights_and_config_are_exact_copies() -> None:
    torch.manual_seed(0)
    source = build_model("tiny", frame_rate=25).eval()  # 4 blocks
    blocks = parse_layers("first:3,last:3", 4)
    deeper = upscale(source, blocks)
    assert deeper.config == dataclasses.replace(source.config, layers=6, name="custom")
    src, new = source.state_dict(), deeper.state_dict()
    for key, value in new.items():
        if key.startswith("blocks."):
            i, rest = key[len("blocks."):].split(".", 1)
            want = src[f"blocks.{blocks[int(i)] - 1}.{rest}"]
        else:
            want = src[key]
        assert torch.equal(value, want), key
    assert len(new) == len(src) + 2 * sum(1 for k in src if k.startswith("blocks.0."))
    # repeated source blocks (2 and 3 appear twice) become independent tensors, not tied parameters
    pointers = {p.data_ptr() for p in deeper.parameters()}
    assert len(pointers) == len(list(deeper.parameters()))
    assert not {p.data_ptr() for p in source.parameters()} & pointers
    # stacking every block once in order is the same model
    same = upscale(source, parse_layers("1-4", 4))
    wav = tone(1.0)[None]
    with torch.no_grad():
        a, b = source(wav), same(wav)
    for x, y in zip(a["hidden_states"], b["hidden_states"]):
        assert torch.equal(x, y)


def test_xlarge_stacked_into_48_blocks_is_xxlarge() -> None:
    assert _preset_name(dataclasses.replace(PRESETS["xlarge"], layers=48)) == "xxlarge"
    assert _preset_name(dataclasses.replace(PRESETS["xlarge"], layers=40)) == "custom"


def test_cli_writes_the_deeper_checkpoint_and_rejects_bad_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    src = save_checkpoint(build_model("tiny", layers=3, dim=64, heads=2), tmp_path / "src.safetensors")
    out = tmp_path / "deep.safetensors"
    assert main(["upscale", str(src), "--layers", "first:2,last:2", "-o", str(out)]) == 0
    assert "3 -> 4 blocks" in capsys.readouterr().out
    deep = load_model(out)
    assert deep.config.layers == 4
    torch.testing.assert_close(deep.state_dict()["blocks.2.ffn.fc1.weight"], load_model(src).state_dict()["blocks.1.ffn.fc1.weight"])
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    assert meta["upscale_blocks"] == "1,2,2,3" and meta["upscale_layers"] == "first:2,last:2"
    assert json.loads(meta["config"])["layers"] == 4
    assert main(["upscale", str(src), "--layers", "first:4", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "first:4 needs 1 <= N <= 3" in err[0]
    assert main(["upscale", str(src), "--layers", "1-3", "-o", str(src)]) == 2
    assert "is the source checkpoint" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "missing.safetensors"), "--layers", "1", "-o", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
