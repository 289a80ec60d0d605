"""Fixtures shared by the tests of usad_upstream/release: stand-in release snapshots (the
release's layout, our reading of its code: usad_upstream/release/standin) and a tiny student."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from usad_upstream.release.fixtures import write_standin_snapshot


@pytest.fixture(scope="session")
def standin_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """USAD v1 layout: modeling_usad.py -> usad_model.py -> usad_modules.py, 50 Hz, 2 blocks of 192."""
    return write_standin_snapshot(tmp_path_factory.mktemp("release") / "USAD-standin", generation=1, seed=3, num_layers=2)


@pytest.fixture(scope="session")
def standin_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A USAD 2.0-style layout: other file names, model_type usad2, 25 Hz."""
    return write_standin_snapshot(tmp_path_factory.mktemp("release") / "USAD2-standin", generation=2, seed=4, num_layers=2)


def copy_snapshot(source: Path, target: Path) -> Path:
    """A private copy to damage (the session snapshots stay intact)."""
    shutil.copytree(source, target)
    return target


def speech_like(seconds: float, seed: int = 0) -> torch.Tensor:
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return 0.2 * torch.sin(2 * torch.pi * (150 + 40 * seed) * t) + 0.05 * noise
