"""Shared fixtures: generated audio and small random checkpoints (nothing is downloaded)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised `tiny` student in the project's checkpoint format."""
    from usad_upstream import build_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(build_model("tiny"), path)
    return path


def tone(seconds: float, freq: float = 440.0, sr: int = 16000) -> torch.Tensor:
    """A deterministic test signal: a tone plus a little seeded noise."""
    t = torch.arange(int(seconds * sr)) / sr
    gen = torch.Generator().manual_seed(int(freq))
    return 0.3 * torch.sin(2 * math.pi * freq * t) + 0.01 * torch.randn(t.shape, generator=gen)


def config_for(root: Path, run: str, *overrides: str) -> dict:
    """The distillation config in root/base.yaml with run_dir root/run and dotted overrides."""
    from usad_upstream.distill.config import load_config

    return load_config(str(root / "base.yaml"), [f"run_dir={root / run}", *overrides])
