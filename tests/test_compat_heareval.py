"""patch_heareval: the TensorFlow stand-in, the FitLoop.current_epoch setter, the NVML name fix."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Iterator

import pytest
import torch

from usad_upstream.compat import patch_heareval

TF_INSTALLED = importlib.util.find_spec("tensorflow") is not None and "tensorflow" not in sys.modules


@pytest.fixture
def fresh_tensorflow_slot() -> Iterator[None]:
    """Run with no `tensorflow` in sys.modules, and put back whatever was there afterwards."""
    saved = sys.modules.pop("tensorflow", None)
    yield
    sys.modules.pop("tensorflow", None)
    if saved is not None:
        sys.modules["tensorflow"] = saved


@pytest.mark.skipif(TF_INSTALLED, reason="a real TensorFlow is installed: no stand-in is needed")
def test_tensorflow_stand_in(fresh_tensorflow_slot: None) -> None:
    patch_heareval()
    tf = sys.modules["tensorflow"]
    assert not isinstance(torch.nn.Linear(1, 1), tf.Module)  # heareval's torch/TF dispatch
    assert tf.test.is_gpu_available(cuda_only=False, min_cuda_compute_capability=None) == torch.cuda.is_available()
    with pytest.raises(AttributeError, match="TensorFlow is not installed"):
        tf.random.uniform((2, 3))
    # Libraries that probe for TensorFlow (transformers, ...) must not crash on the stand-in.
    assert importlib.util.find_spec("tensorflow") is not None
    patch_heareval()
    assert sys.modules["tensorflow"] is tf  # idempotent


def test_existing_tensorflow_is_left_alone(fresh_tensorflow_slot: None) -> None:
    real = ModuleType("tensorflow")
    sys.modules["tensorflow"] = real
    patch_heareval()
    assert sys.modules["tensorflow"] is real


@pytest.mark.skipif(TF_INSTALLED, reason="a real TensorFlow is installed: no stand-in is needed")
def test_heareval_and_validator_import(fresh_tensorflow_slot: None) -> None:
    for name in [m for m in sys.modules if m.startswith(("heareval.embeddings", "hearvalidator"))]:
        del sys.modules[name]
    with pytest.raises(ModuleNotFoundError, match="tensorflow"):
        import hearvalidator.validate  # noqa: F401
    patch_heareval()
    import heareval.embeddings.runner
    import hearvalidator.validate

    assert callable(heareval.embeddings.runner.runner) and hearvalidator.validate.ValidateModel


def test_fit_loop_current_epoch_is_settable() -> None:
    import pytorch_lightning as pl

    patch_heareval()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit_loop.current_epoch = 7  # what heareval's task_predictions_test does before testing
    assert trainer.current_epoch == 7 and trainer.fit_loop.current_epoch == 7
    from pytorch_lightning.loops.fit_loop import FitLoop

    prop = FitLoop.__dict__["current_epoch"]
    patch_heareval()
    assert FitLoop.__dict__["current_epoch"] is prop  # idempotent


def test_gpu_device_name_accepts_str(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynvml >= 11.5 returns the GPU name as str; heareval calls .decode() on it."""
    import heareval.gpu_max_mem as gpu_max_mem

    monkeypatch.setattr(gpu_max_mem, "device_name", lambda device_index=0: gpu_max_mem.nvmlDeviceGetName(0).decode())
    monkeypatch.setattr(gpu_max_mem, "nvmlDeviceGetHandleByIndex", lambda index: index, raising=False)
    monkeypatch.setattr(gpu_max_mem, "nvmlDeviceGetName", lambda handle: f"NVIDIA H100 #{handle}", raising=False)
    with pytest.raises(AttributeError, match="decode"):
        gpu_max_mem.device_name()
    patch_heareval()
    assert gpu_max_mem.device_name() == "NVIDIA H100 #0"
    monkeypatch.setattr(gpu_max_mem, "nvmlDeviceGetName", lambda handle: b"Tesla T4", raising=False)
    assert gpu_max_mem.device_name(1) == "Tesla T4"
