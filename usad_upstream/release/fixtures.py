"""A stand-in release snapshot with random weights, for tests and benchmarks (no release can be
downloaded here). The code comes from usad_upstream/release/standin/ (see its docstring for what
is known and what is a guess); this module only lays it out as a Hugging Face snapshot.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..presets import PRESETS
from .resolve import read_snapshot

STANDIN = Path(__file__).parent / "standin"
FILES = ("configuration_usad.py", "modeling_usad.py", "usad_model.py", "usad_modules.py")
# USAD 2.0's file names are not known: generation 2 uses other names for the same modules, so
# nothing downstream can rely on names.
V2_NAMES = {"configuration_usad": "configuration_usad2", "modeling_usad": "modeling_usad2",
            "usad_model": "usad2_model", "usad_modules": "usad2_modules"}
LICENCES = {1: "bsd-3-clause", 2: "cc-by-nc-sa-4.0"}


def standin_config(generation: int = 1, size: str = "tiny", **overrides: object) -> dict:
    """config.json of a stand-in: RELEASED.md's fields (USAD-Large's values) at the size of one of
    our presets (tiny, small, base, large); `overrides` replace fields (e.g. num_layers=2)."""
    preset = PRESETS[size]
    dim, layers, heads = preset.dim, preset.layers, preset.heads
    modeling, configuration = ("modeling_usad2", "configuration_usad2") if generation == 2 else ("modeling_usad", "configuration_usad")
    config = {
        "architectures": ["USADModel"],
        "auto_map": {"AutoConfig": f"{configuration}.USADConfig", "AutoModel": f"{modeling}.USADModel"},
        "model_type": "usad2" if generation == 2 else "usad",
        "torch_dtype": "float32", "transformers_version": "4.52.4",
        "encoder_dim": dim, "num_layers": layers, "num_attention_heads": heads, "attention_type": "mhsa",
        "feed_forward_expansion_factor": 4, "half_step_residual": True, "transformer_style": True,
        "conv_expansion_factor": 2, "conv_kernel_size": 31, "attention_dropout_p": 0.1, "conv_dropout_p": 0.1,
        "feed_forward_dropout_p": 0.1, "input_dropout_p": 0.0, "input_dim": 128, "use_framewise_subsample": True,
        "use_patchwise_subsample": False, "conv_subsample_channels": 64,
        "conv_subsample_rate": 4 if generation == 2 else 2,  # USAD 2.0 XLarge/XXLarge: 25 Hz
        "subsample_normalization": True, "conv_pos": True, "conv_pos_depth": 5, "conv_pos_width": 95,
        "conv_pos_groups": 16, "mamba_d_state": 16, "mamba_expand": 2,
    }
    config.update(overrides)
    return config


def _source(name: str, generation: int) -> str:
    text = (STANDIN / name).read_text()
    if generation == 2:
        text = re.sub(r"from \.(\w+) import", lambda m: f"from .{V2_NAMES.get(m.group(1), m.group(1))} import", text)
        text = text.replace('model_type = "usad"', 'model_type = "usad2"')
    return text


def write_standin_snapshot(directory: "str | Path", generation: int = 1, size: str = "tiny", seed: int = 0,
                           model_card: bool = True, **overrides: object) -> Path:
    """Write config.json, the stand-in's .py files, random model.safetensors (`model.` keys; every
    parameter random, LayerNorms included, so a wrong key map cannot pass) and a model card."""
    from safetensors.torch import save_file

    from .backend import import_snapshot_class

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        stem = name[:-3]
        target = (V2_NAMES[stem] if generation == 2 else stem) + ".py"
        (directory / target).write_text(_source(name, generation))
    config = standin_config(generation, size, **overrides)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if model_card:
        (directory / "README.md").write_text(f"---\nlicense: {LICENCES[generation]}\n---\n# stand-in USAD snapshot\n")
    weights = directory / "model.safetensors"
    save_file({"placeholder": torch.zeros(1)}, str(weights))  # read_snapshot wants the file; replaced below
    snapshot = read_snapshot(directory)
    config_cls = import_snapshot_class(snapshot, snapshot.config_class)
    model_cls = import_snapshot_class(snapshot, snapshot.model_class)
    torch.manual_seed(seed)
    model = model_cls(config_cls.from_pretrained(str(directory)))
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if value.dim() == 1 and value.is_floating_point():
            value += 0.1 * torch.randn_like(value)  # LayerNorm gains/biases away from 1/0
        state[key] = value.contiguous()
    save_file(state, str(weights), metadata={"format": "pt"})
    return directory

