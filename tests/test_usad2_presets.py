"""USAD 2.0 presets: the XLarge / XXLarge students and the two-stage distillation configs."""
from __future__ import annotations

import pytest
import torch

from usad_upstream import PRESETS, build_model
from usad_upstream.distill.config import CONFIG_DIR, load_config

PUBLISHED = {"xlarge": 695e6, "xxlarge": 1036e6}  # RELEASED.md, USAD 2.0


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_xlarge_and_xxlarge_within_one_percent_of_the_published_sizes(size: str) -> None:
    with torch.device("meta"):  # shapes only: no 4 GB of random weights
        model = build_model(size)
    params = model.num_parameters()
    assert abs(params - PUBLISHED[size]) <= 0.01 * PUBLISHED[size], params
    config = PRESETS[size]
    assert (config.dim, config.frame_rate, model.downsample_rate) == (1280, 25, 640)
    assert config.layers == {"xlarge": 32, "xxlarge": 48}[size] and config.dim // config.heads == 64


STAGE1 = ["usad2_small_stage1", "usad2_base_stage1", "usad2_large_stage1", "usad2_xlarge_stage1"]
STAGE2 = ["usad2_large_stage2", "usad2_xlarge_stage2", "usad2_xxlarge_stage2"]


def test_every_usad2_preset_is_listed_here() -> None:
    assert sorted(p.stem for p in CONFIG_DIR.glob("usad2_*.yaml")) == sorted(STAGE1 + STAGE2)


@pytest.mark.parametrize("name", STAGE1)
def test_stage1_presets_follow_the_paper(name: str) -> None:
    config = load_config(name)
    teachers = config["teachers"]
    assert {n: (t["kind"], t["domain"]) for n, t in teachers.items()} == {
        "wavlm": ("wavlm", "speech"), "atst": ("atst_frame", "sound"), "muq": ("muq", "music")}
    assert all(t.get("weight", 1.0) == 1.0 and t.get("layers") is None for t in teachers.values())
    assert config["objective"]["domain_omega"] == 10
    assert config["train"]["max_steps"] == 600_000 and config["train"]["init_from"] is None
    assert config["model"]["size"] == name.split("_")[1]


@pytest.mark.parametrize("name", STAGE2)
def test_stage2_presets_follow_the_paper(name: str) -> None:
    config = load_config(name)
    teachers = config["teachers"]
    assert sorted(teachers) == ["af_whisper", "whisper"]
    assert all(t["kind"] == "whisper" and t["layers"] == "last" and t.get("weight", 1.0) == 1.0 for t in teachers.values())
    assert config["objective"]["domain_omega"] is None  # equal weights
    assert config["train"]["max_steps"] == 50_000
    size = name.split("_")[1]
    assert config["model"]["size"] == size
    # initialised from the stage-1 run of the same size; XXLarge from XLarge's, up-scaled
    if size == "xxlarge":
        assert config["train"]["init_from"] == "runs/usad2_xxlarge_init.safetensors"
    else:
        assert config["train"]["init_from"] == load_config(f"usad2_{size}_stage1")["run_dir"]
