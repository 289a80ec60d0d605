"""The USAD checkpoint: one safetensors file holding the weights and, in its metadata, the config.

Also reads the released Hugging Face USAD weights (`model.`-prefixed keys) through an explicit
key map. That map is UNVERIFIED: no released file could be inspected here (see README).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Mapping

import torch

from .model import UsadModel, build_model
from .presets import UsadConfig

FORMAT = "usad-student"
FORMAT_VERSION = "1"
HOW_TO_GET = (
    "create one with `usad init --size base -o student.safetensors`, distil one with `usad distill` + "
    "`usad export`, or download a released USAD model.safetensors (Hugging Face MIT-SLS/USAD-Base)"
)


class CheckpointError(ValueError):
    """A file that is missing, truncated, corrupt or not a USAD student checkpoint."""


def atomic_write(path: "str | os.PathLike[str]", write) -> None:  # type: ignore[no-untyped-def]
    """Call write(tmp_path), then rename over `path`: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(model: UsadModel, path: "str | os.PathLike[str]", extra: "Mapping[str, str] | None" = None) -> Path:
    """Write weights + config atomically to a .safetensors file; returns the path."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(model.config.to_dict())}
    metadata.update(extra or {})
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return Path(path)


def read_safetensors(path: "str | os.PathLike[str]") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata, turning every low-level failure into a CheckpointError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; {HOW_TO_GET}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        head = path.read_bytes()[:4]
        hint = " (it looks like a torch.save/zip file, e.g. a distillation run checkpoint: use `usad export`)" if head[:2] == b"PK" else ""
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}){hint}") from None
    return tensors, metadata


def load_model(path: "str | os.PathLike[str]", map_location: "str | torch.device" = "cpu") -> UsadModel:
    """Rebuild a student from a checkpoint alone (ours, or the released `model.`-prefixed weights)."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") == FORMAT:
        if metadata.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint format version {metadata.get('format_version')!r}, this code reads {FORMAT_VERSION!r}"
            )
        try:
            config = UsadConfig.from_dict(json.loads(metadata["config"]))
        except (KeyError, json.JSONDecodeError, TypeError) as exc:
            raise CheckpointError(f"{path}: checkpoint metadata field 'config' is missing or invalid ({exc})") from None
    elif tensors and all(key.startswith("model.") for key in tensors):
        tensors = map_released_keys(tensors)
        config = infer_config(tensors)
    else:
        raise CheckpointError(
            f"{path}: not a USAD student checkpoint (metadata 'format' is {metadata.get('format')!r}, "
            f"expected {FORMAT!r}, and the keys are not the released `model.`-prefixed layout); {HOW_TO_GET}"
        )
    with torch.device("meta"):  # no random init and no second copy of the weights
        model = build_model(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config {config.name!r}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(map_location).eval()


def infer_config(state: Mapping[str, torch.Tensor]) -> UsadConfig:
    """Config from tensor shapes alone (dim, depth, heads, FFN width), for weights without ours."""
    try:
        dim = state["subsampling.proj.weight"].shape[0]
        layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        heads = state["blocks.0.attn.pos_bias_u"].shape[0]
        ffn_mult = state["blocks.0.ffn.fc1.weight"].shape[0] // dim
        pos_depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"pos_conv\.convs\.(\d+)\.", k)))
        conv = state["pos_conv.convs.0.weight"]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot infer the model config from the weights: missing {exc}") from None
    name = {(384, 12): "small", (768, 12): "base", (1024, 24): "large"}.get((dim, layers), "custom")
    return UsadConfig(
        dim=dim, layers=layers, heads=heads, ffn_mult=ffn_mult, pos_conv_depth=pos_depth,
        pos_conv_kernel=conv.shape[-1], pos_conv_groups=dim // conv.shape[1], name=name,
    )


# Released-name -> our-name rules, applied in order after stripping `model.`. UNVERIFIED guesses
# in ESPnet / data2vec naming; a real safetensors header decides (see tests/test_checkpoint.py).
RELEASED_KEY_RULES: list[tuple[str, str]] = [
    (r"^(?:encoder\.)?(?:frontend|subsample|embed)\.conv\.0\.", "subsampling.conv1."),
    (r"^(?:encoder\.)?(?:frontend|subsample|embed)\.conv\.2\.", "subsampling.conv2."),
    (r"^(?:encoder\.)?(?:frontend|subsample|embed)\.(?:out|linear)\.", "subsampling.proj."),
    (r"^(?:encoder\.)?(?:frontend|subsample|embed)\.(?:norm|layer_norm)\.", "subsampling.norm."),
    (r"^(?:encoder\.)?pos_conv\.(\d+)\.0\.", r"pos_conv.convs.\1."),
    (r"^(?:encoder\.)?(?:layers|encoders)\.(\d+)\.", r"blocks.\1."),
    (r"\.self_attn\.linear_q\.", ".attn.q_proj."),
    (r"\.self_attn\.linear_k\.", ".attn.k_proj."),
    (r"\.self_attn\.linear_v\.", ".attn.v_proj."),
    (r"\.self_attn\.linear_out\.", ".attn.out_proj."),
    (r"\.self_attn\.linear_pos\.", ".attn.pos_proj."),
    (r"\.self_attn\.pos_bias_([uv])$", r".attn.pos_bias_\1"),
    (r"\.feed_forward\.w_1\.", ".ffn.fc1."),
    (r"\.feed_forward\.w_2\.", ".ffn.fc2."),
    (r"\.norm_mha\.", ".attn_norm."),
    (r"\.norm_ff\.", ".ffn_norm."),
    (r"^(?:encoder\.)?after_norm\.", "final_norm."),
]


def map_released_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip `model.` and rename released keys to ours; keys already in our naming pass through."""
    mapped = {}
    for key, value in state.items():
        name = key[len("model."):]
        for pattern, replacement in RELEASED_KEY_RULES:
            name = re.sub(pattern, replacement, name)
        mapped[name] = value
    return mapped
