"""README: "Writes are atomic (temp file + rename)". A failure in the middle of a write (disk full,
Ctrl-C, a crash of the writer) leaves the previous file intact and no temp file behind: student
checkpoints, distillation manifests and run manifests. (The trainer's step checkpoints:
tests/test_promises_trainer.py.)"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import torch

from results.manifest import MANIFEST, read_manifest, write_manifest as write_run_manifest
from usad_upstream import build_model, load_model, save_checkpoint
from usad_upstream.distill.data import ManifestEntry, read_manifest as read_distill_manifest, write_manifest


def half_then(error: BaseException):  # type: ignore[no-untyped-def]
    """A writer that puts half of what the real one would write into the file it is given, then fails."""

    def write(real, target: "str | os.PathLike[str]", *args: object, **kwargs: object) -> None:  # type: ignore[no-untyped-def]
        real(target, *args, **kwargs)
        data = Path(target).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])
        raise error

    return write


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_checkpoint_write_that_fails_midway_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    error: BaseException) -> None:
    import safetensors.torch

    torch.manual_seed(0)
    old_model = build_model("tiny", layers=1).eval()
    path = save_checkpoint(old_model, tmp_path / "student.safetensors")
    before = path.read_bytes()
    real = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", lambda tensors, filename, **k: half_then(error)(
        lambda target, **kw: real(tensors, target, **kw), filename, **k))
    with pytest.raises(type(error)):
        save_checkpoint(build_model("tiny", layers=2), path)
    assert os.listdir(tmp_path) == ["student.safetensors"]  # no temp file left
    assert path.read_bytes() == before
    monkeypatch.undo()
    wav = 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(1))
    loaded = load_model(path)
    with torch.inference_mode():
        assert torch.equal(loaded(wav)["x"], old_model(wav)["x"])


def test_a_distillation_manifest_write_that_fails_midway_leaves_the_old_manifest(tmp_path: Path) -> None:
    path = tmp_path / "speech.tsv"
    old = [ManifestEntry(f"/data/a{i}.wav", 16000 + i, 16000, "speech") for i in range(3)]
    write_manifest(old, path)
    before = path.read_bytes()

    def entries_then_crash() -> Iterator[ManifestEntry]:
        for i in range(1000):
            if i == 500:
                raise RuntimeError("the file system went away")
            yield ManifestEntry(f"/data/b{i}.wav", 32000, 16000, "sound")

    with pytest.raises(RuntimeError, match="went away"):
        write_manifest(entries_then_crash(), path)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == ["speech.tsv"] and path.read_bytes() == before
    assert list(read_distill_manifest(path)) == old


def test_a_run_manifest_write_that_fails_midway_leaves_the_old_manifest(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write_run_manifest(tmp_path, {"benchmark": "SUPERB", "stages": {"train": {"status": "done"}}})
    before = (tmp_path / MANIFEST).read_bytes()
    real = Path.write_text
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: half_then(KeyboardInterrupt())(
        lambda target, *b, **c: real(Path(target), *b, **c), self, *a, **k))
    with pytest.raises(KeyboardInterrupt):
        write_run_manifest(tmp_path, {"benchmark": "SUPERB", "stages": {"train": {"status": "running"}}})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [MANIFEST] and (tmp_path / MANIFEST).read_bytes() == before
    assert read_manifest(tmp_path)["stages"]["train"]["status"] == "done"
