"""A student model from whatever a user has of it: an exported .safetensors student, a
distillation run checkpoint (checkpoints/step_*.pt) or a run directory (its latest checkpoint).

Shared by `usad export`, `usad upscale` and the trainer's `train.init_from` (USAD 2.0's stage 2
starts from a stage-1 student).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..checkpoint import HOW_TO_GET, CheckpointError, load_model
from ..model import UsadModel, build_model
from ..presets import UsadConfig


def read_run_checkpoint(path: "str | Path") -> tuple[Path, dict]:
    """(file, state) of a run checkpoint or of a run directory's latest one; CheckpointError naming
    the file when it is not a `usad distill` checkpoint."""
    from .trainer import latest_checkpoint

    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ValueError(f"{path}: no checkpoints/step_*.pt in this run directory")
        path = found
    if not path.is_file():
        raise ValueError(f"run checkpoint not found: {path}")
    not_ours = f"{path}: not a `usad distill` checkpoint (a step_*.pt under RUN_DIR/checkpoints)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{not_ours}: torch.load failed ({exc})") from None
    missing = [k for k in ("student_config", "student") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{not_ours}: no {missing} entries (`usad info` reads exported .safetensors files)")
    return path, state


def student_from_run(path: "str | Path") -> tuple[Path, dict, UsadModel]:
    """(checkpoint file, its state, the student with its weights) of a run checkpoint or run dir."""
    path, state = read_run_checkpoint(path)
    try:
        config = UsadConfig.from_dict(state["student_config"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: its student_config is not a USAD model config ({exc})") from None
    model = build_model(config)
    model.load_state_dict(state["student"])
    return path, state, model


def load_student(path: "str | Path") -> UsadModel:
    """A student from a .safetensors checkpoint (ours or released), a run checkpoint or a run dir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; {HOW_TO_GET}")
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head != b"PK" and head[:1] != b"\x80":  # not a torch.save archive or pickle: a .safetensors file
            return load_model(path)
    return student_from_run(path)[2]
