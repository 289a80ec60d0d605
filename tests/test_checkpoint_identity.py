"""Equal models, equal checkpoints: byte-identical `usad init` files across processes, content
hashes that ignore everything but the tensors and the config, and plain messages for the files
people give by mistake (a run directory, an audio file)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from usad_upstream import build_model, load_model, save_checkpoint
from usad_upstream.checkpoint import CheckpointError, content_hash

REPO = Path(__file__).resolve().parents[1]


def test_usad_init_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    """safetensors writes metadata in a per-process hash order; three processes would disagree
    (1 chance in 36 that they agree by luck) if the header were not rewritten sorted."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    digests = set()
    for i in range(3):
        out = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-m", "usad_upstream.cli", "init", "--size", "tiny", "--seed", "0", "-o", str(out)],
                       check=True, env=env, capture_output=True)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
    assert load_model(tmp_path / "0.safetensors").config.name == "tiny"


def test_content_hash_ignores_bytes_that_do_not_change_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", layers=1)
    a = save_checkpoint(model, tmp_path / "a.safetensors")
    b = save_checkpoint(model, tmp_path / "b.safetensors", extra={"source_run": "/somewhere/else"})
    assert a.read_bytes() != b.read_bytes()
    assert content_hash(a) == content_hash(b)
    # the same tensors inserted in another order, metadata in another order: same hash
    state = {k: v.contiguous() for k, v in reversed(list(model.state_dict().items()))}
    metadata = {"config": json.dumps(model.config.to_dict()), "format_version": "1", "format": "usad-student"}
    save_file(state, str(tmp_path / "c.safetensors"), metadata=metadata)
    assert content_hash(tmp_path / "c.safetensors") == content_hash(a)
    # one weight changed, or the config changed: another hash
    other_config = build_model("tiny", layers=1, dropout=0.0)
    other_config.load_state_dict(model.state_dict())
    assert content_hash(save_checkpoint(other_config, tmp_path / "d.safetensors")) != content_hash(a)
    with torch.no_grad():
        model.final_norm.weight[0] += 1e-3
    assert content_hash(save_checkpoint(model, tmp_path / "e.safetensors")) != content_hash(a)


def test_content_hash_of_other_files_is_their_bytes(tmp_path: Path) -> None:
    spec = tmp_path / "teacher.yaml"
    spec.write_text("kind: s3prl\nname: fbank\n")
    assert content_hash(spec) == hashlib.sha256(spec.read_bytes()).hexdigest()[:12]
    torch.save({"model": {}}, tmp_path / "t.pt")
    assert content_hash(tmp_path / "t.pt") == hashlib.sha256((tmp_path / "t.pt").read_bytes()).hexdigest()[:12]


def test_a_run_directory_is_named_as_one_with_the_export_command(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("run_dir: run\n")
    with pytest.raises(CheckpointError, match=rf"{run} is a distillation run directory.*`usad export {run} -o student.safetensors`"):
        load_model(run)
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        load_model(tmp_path)


@pytest.mark.parametrize("suffix,kind", [(".wav", "WAV"), (".flac", "FLAC")])
def test_an_audio_file_is_named_as_audio(tmp_path: Path, suffix: str, kind: str) -> None:
    path = tmp_path / f"clip{suffix}"
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)
    with pytest.raises(CheckpointError, match=rf"is an audio file \({kind}\), not a checkpoint"):
        load_model(path)
