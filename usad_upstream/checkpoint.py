"""The USAD checkpoint: one safetensors file holding the weights and, in its metadata, the config.

The official releases (Hugging Face snapshots) are read by usad_upstream/release/: through their
own code, or converted once by `usad convert` into this format, verified layer by layer.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Mapping

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

    def write(tmp: str) -> None:
        save_file(state, tmp, metadata=metadata)
        _sort_header_metadata(tmp)

    atomic_write(path, write)
    return Path(path)


def _read_header(handle: BinaryIO) -> "tuple[int, dict] | None":
    """(header size, header) of an open safetensors file; None when it is not one."""
    file_size = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    size = int.from_bytes(handle.read(8), "little")
    if file_size < 8 or not 2 <= size <= file_size - 8:
        return None
    try:
        header = json.loads(handle.read(size))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return (size, header) if isinstance(header, dict) else None


def _sort_header_metadata(path: "str | os.PathLike[str]") -> None:
    """safetensors writes the metadata in hash-map order, which changes from process to process;
    rewrite it sorted (same length, in place) so that equal checkpoints are equal bytes."""
    with open(path, "r+b") as handle:
        found = _read_header(handle)
        if found is None:
            return
        size, header = found
        metadata = header.pop("__metadata__", None) or {}
        text = json.dumps({"__metadata__": dict(sorted(metadata.items())), **header}, separators=(",", ":"),
                          ensure_ascii=False).encode()
        if len(text) <= size:  # serde_json and json agree on these strings, so the length is the same
            handle.seek(8)
            handle.write(text.ljust(size))


def content_hash(path: "str | os.PathLike[str]", length: int = 12) -> str:
    """Short sha256 of what defines a model, so equal models get equal hashes whatever their bytes:
    for a safetensors file its tensors sorted by name (name, dtype, shape, data) plus the USAD
    config when it carries one (other metadata, e.g. provenance, is left out); any other file
    (a teacher checkpoint, a spec file) by its bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        found = _read_header(handle)
        if found is None:
            handle.seek(0)
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            return digest.hexdigest()[:length]
        size, header = found
        config = (header.pop("__metadata__", None) or {}).get("config")
        if config is not None:
            try:
                config = json.dumps(json.loads(config), sort_keys=True)
            except json.JSONDecodeError:
                pass
            digest.update(f"config {config}\n".encode())
        for name in sorted(header):
            entry = header[name]
            start, end = entry["data_offsets"]
            digest.update(f"{name} {entry['dtype']} {entry['shape']}\n".encode())
            handle.seek(8 + size + start)
            remaining = end - start
            while remaining:
                block = handle.read(min(remaining, 1 << 20))
                if not block:
                    raise CheckpointError(f"{path}: truncated safetensors file (tensor {name!r} is cut short)")
                digest.update(block)
                remaining -= len(block)
    return digest.hexdigest()[:length]


_AUDIO_MAGIC = ((b"RIFF", "WAV"), (b"fLaC", "FLAC"), (b"OggS", "Ogg"), (b"ID3", "MP3"), (b"\xff\xfb", "MP3"))


def _not_a_checkpoint(path: Path) -> "str | None":
    """Why `path` is plainly not a student checkpoint (a run directory, audio, a torch zip), if it is."""
    if path.is_dir():
        if (path / "checkpoints").is_dir() or (path / "config.yaml").is_file():
            return (f"{path} is a distillation run directory, not a student checkpoint: export its latest step "
                    f"with `usad export {path} -o student.safetensors` and pass that file")
        return f"{path} is a directory, not a checkpoint file; {HOW_TO_GET}"
    with open(path, "rb") as handle:
        head = handle.read(12)
    for magic, kind in _AUDIO_MAGIC:
        if head.startswith(magic) and (kind != "WAV" or head[8:12] == b"WAVE"):
            return (f"{path} is an audio file ({kind}), not a checkpoint: pass audio as the input and a USAD "
                    f".safetensors student as the checkpoint ({HOW_TO_GET})")
    if head[:2] == b"PK":
        return (f"{path}: not a safetensors file but a torch.save/zip file (e.g. a distillation run checkpoint): "
                f"use `usad export`")
    return None


def read_safetensors(path: "str | os.PathLike[str]") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata, turning every low-level failure into a CheckpointError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; {HOW_TO_GET}")
    problem = _not_a_checkpoint(path)
    if problem:
        raise CheckpointError(problem)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
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
