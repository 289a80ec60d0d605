"""The USAD checkpoint: one safetensors file holding the weights and, in its metadata, the config.

The official releases (Hugging Face snapshots) are read by usad_upstream/release/: through their
own code, or converted once by `usad convert` into this format, verified layer by layer.
"""
from __future__ import annotations

import json
import os
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
    "`usad export`, convert an official release with `usad convert MIT-SLS/USAD-Base -o student.safetensors`, "
    "or pass a release snapshot directory or hub id where the tool accepts one"
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
    """Rebuild a student from one of our checkpoint files alone."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT:
        if tensors and all(key.startswith("model.") for key in tensors):
            raise CheckpointError(
                f"{path}: the weights file of a Hugging Face snapshot (an official USAD release?), not a student "
                "checkpoint; pass its directory (config.json and the .py files beside it) where the tool takes a "
                f"snapshot, or convert it: usad convert {Path(path).parent} -o student.safetensors"
            )
        raise CheckpointError(
            f"{path}: not a USAD student checkpoint (metadata 'format' is {metadata.get('format')!r}, "
            f"expected {FORMAT!r}); {HOW_TO_GET}"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {metadata.get('format_version')!r}, this code reads {FORMAT_VERSION!r}"
        )
    try:
        config = UsadConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata field 'config' is missing or invalid ({exc})") from None
    with torch.device("meta"):  # no random init and no second copy of the weights
        model = build_model(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config {config.name!r}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(map_location).eval()
