"""The teacher interface: a frozen model that maps a padded 16 kHz batch to per-layer targets."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class TeacherOutput:
    """Per-layer targets. `layers[i]` is layer i+1 ([B, T, D]); frames past `lengths` are padding."""

    layers: list[torch.Tensor]
    lengths: torch.Tensor
    frame_rate: float


class Teacher(nn.Module):
    """Frozen, eval-mode, inference-only feature extractor used as a distillation target.

    Subclasses set `frame_rate` (Hz), `num_layers` and `dim`, and implement `extract`.
    """

    frame_rate: float
    num_layers: int
    dim: int

    def freeze(self) -> "Teacher":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Teacher":
        """Teachers stay in eval mode whatever the trainer asks (no dropout in targets)."""
        return super().train(False)

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        raise NotImplementedError

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        with torch.inference_mode():
            return self.extract(wavs, wav_lens)


TARGETS = ("ffn", "hidden_states")


def check_target(target: str) -> str:
    """Validate a target name: 'ffn' (FFN sub-block output before the residual add, the paper's
    choice) or 'hidden_states' (each layer's output)."""
    if target not in TARGETS:
        raise ValueError(f"unknown teacher target {target!r}; expected one of {list(TARGETS)}")
    return target


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, T] True at valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _benign_globals() -> list:
    """Classes that plain training checkpoints pickle besides tensors: argparse namespaces and
    numpy scalars/dtypes (hyper-parameters, Lightning callback state)."""
    import argparse

    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [argparse.Namespace, np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"), *dtypes]


def load_torch_file(path: "str | os.PathLike[str]", what: str, trust_pickle: bool = False) -> object:
    """torch.load a released checkpoint on CPU: weights-only with a few benign classes allowed;
    a full unpickle (which can run code stored in the file) only when `trust_pickle` is set."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} checkpoint not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save zip archive, or a legacy pickle
        raise ValueError(f"{path}: not a readable PyTorch checkpoint for {what} (neither a torch.save archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(_benign_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise ValueError(f"{path}: not a readable PyTorch checkpoint for {what} ({exc})") from None
        if not trust_pickle:
            try:
                extra = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # the listing is only a hint for the message
                extra = []
            raise ValueError(
                f"{path}: the {what} checkpoint pickles Python objects beyond tensors ({', '.join(extra) or 'unknown'}); "
                f"if the file comes from a source you trust, load it with trust_pickle=True "
                f"(teacher spec field \"trust_pickle\": true)"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint for {what} ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # any unpickling failure of an untyped file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint for {what} ({exc})") from None
