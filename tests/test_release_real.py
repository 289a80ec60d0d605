"""The checks of test_release*.py on a REAL release snapshot, when one is at hand:

    USAD_RELEASED_DIR=/path/to/USAD-Base pytest tests/test_release_real.py

(a directory from `huggingface-cli download MIT-SLS/USAD-Base --local-dir DIR`). Without it every
test here is skipped, saying so: no release could be downloaded where this toolkit was written,
so its key map and config flags are verified on stand-ins only (README: Official releases).
A failure here is the information that matters: it names the layer where our reading of the
release's code is wrong.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from release_standins import speech_like

RELEASED = os.environ.get("USAD_RELEASED_DIR", "")
pytestmark = pytest.mark.skipif(not RELEASED, reason="USAD_RELEASED_DIR is not set: no real release snapshot to check")


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    from usad_upstream.release import load_encoder

    return load_encoder(RELEASED, trust_remote_code=True)


def test_resolves_from_config_json(encoder) -> None:  # type: ignore[no-untyped-def]
    from usad_upstream.release import resolve_checkpoint

    resolved = resolve_checkpoint(RELEASED)
    snap = resolved.snapshot
    assert resolved.kind == "release" and snap.downsample_rate in (320, 640)
    assert snap.licence in ("bsd-3-clause", "cc-by-nc-sa-4.0"), (snap.licence, snap.licence_source)
    assert all(p.is_file() for p in snap.code_files)


def test_padded_batch_matches_items_alone(encoder) -> None:  # type: ignore[no-untyped-def]
    wavs = [speech_like(2.0, 1), speech_like(1.1, 2)]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    with torch.inference_mode():
        out = encoder(batch, torch.tensor([len(w) for w in wavs]))
        alone = [encoder(w[None]) for w in wavs]
    assert "embedding" in out, "the release's outputs gave no input embedding (s3prl needs L + 1 layers)"
    for i, single in enumerate(alone):
        n = int(out["lengths"][i])
        assert n == single["x"].shape[1]
        for a, b in zip(out["hidden_states"], single["hidden_states"]):
            torch.testing.assert_close(a[i, :n], b[0], rtol=0, atol=1e-5)


def test_s3prl_and_hear_contracts(encoder, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import hear_api
    from usad_upstream.release import TRUST_ENV
    from usad_upstream.upstream import usad

    monkeypatch.setenv(TRUST_ENV, "1")
    expert = usad(RELEASED)
    with torch.no_grad():
        hidden = expert([speech_like(1.0)])["hidden_states"]
    assert len(hidden) == encoder.config.layers + 1
    model = hear_api.load_model(RELEASED)
    emb, ts = hear_api.get_timestamp_embeddings(speech_like(1.5)[None], model)
    hop_ms = encoder.downsample_rate / 16
    assert emb.shape[-1] == encoder.config.dim and float(ts[0, 1] - ts[0, 0]) == hop_ms


def test_converts_and_verifies(tmp_path: Path) -> None:
    from usad_upstream.presets import UsadConfig
    from usad_upstream.release import resolve_checkpoint
    from usad_upstream.release.convert import convert
    from usad_upstream.release.hf_export import export_hf

    resolved = resolve_checkpoint(RELEASED)
    if resolved.snapshot.subsample_rate != 2 and "frame_rate" not in {f.name for f in dataclasses.fields(UsadConfig)}:
        pytest.skip("a 25 Hz release; the native model has no 25 Hz frame rate yet")
    model, metadata = convert(resolved, trust_remote_code=True)  # raises, naming the first layer, if our reading is wrong
    assert metadata["license"] == resolved.snapshot.licence
    export_hf(model, tmp_path / "export")  # verified through its own files on the way
