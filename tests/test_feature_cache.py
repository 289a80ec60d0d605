"""The per-waveform feature cache of the usad and usad_teacher s3prl upstreams."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tone
from usad_upstream.teachers.fixtures import write_atst_checkpoint
from usad_upstream.upstream import UsadUpstreamError, usad
from usad_upstream.upstream.cache import FEATURE_CACHE_ENV
from usad_upstream.upstream.teacher_expert import usad_teacher

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def teacher_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache_teacher")
    write_atst_checkpoint(root / "audio.ckpt", dim=64, depth=2, mlp_hidden=32)
    (root / "audio.yaml").write_text("kind: atst_frame\npath: audio.ckpt\n")
    return root / "audio.yaml"


def _experts(monkeypatch: pytest.MonkeyPatch, which: str, path: Path) -> tuple:
    """The same upstream twice: without the cache and with a 64 MB one."""
    make = usad if which == "usad" else usad_teacher
    monkeypatch.delenv(FEATURE_CACHE_ENV, raising=False)
    plain = make(str(path)).eval()
    monkeypatch.setenv(FEATURE_CACHE_ENV, "64")
    return plain, make(str(path)).eval()


@pytest.mark.parametrize("which", ["usad", "usad_teacher"])
def test_cached_features_match_the_batched_forward(which: str, monkeypatch: pytest.MonkeyPatch,
                                                   tiny_checkpoint: Path, teacher_spec: Path) -> None:
    plain, cached = _experts(monkeypatch, which, tiny_checkpoint if which == "usad" else teacher_spec)
    batches = [[tone(1.0, 300.0), tone(0.61, 500.0), tone(1.0, 300.0)], [tone(0.61, 500.0), tone(0.8, 700.0)]]
    with torch.no_grad():
        for wavs in batches:
            want, got = plain(wavs), cached(wavs)
            frames = [plain([w])["hidden_states"][0].shape[1] for w in wavs]
            assert len(got["hidden_states"]) == len(want["hidden_states"])
            for a, b in zip([*want["hidden_states"], want["last_hidden_state"]],
                            [*got["hidden_states"], got["last_hidden_state"]]):
                assert a.shape == b.shape
                for i, n in enumerate(frames):  # valid frames agree (README: ~1e-6); the runner drops the padding
                    torch.testing.assert_close(b[i, :n], a[i, :n], atol=2e-6, rtol=1e-6)
    # 3 distinct waveforms computed once each; the other 2 rows came from the cache
    assert cached.cache.misses == 3 and cached.cache.hits == 2
    assert plain.cache.hits == plain.cache.misses == 0


def test_cache_is_bypassed_with_gradients_or_in_training_mode(monkeypatch: pytest.MonkeyPatch,
                                                              tiny_checkpoint: Path) -> None:
    _, cached = _experts(monkeypatch, "usad", tiny_checkpoint)
    wav = tone(0.7, 440.0)
    out = cached([wav])  # gradients on: the upstream is being fine-tuned
    assert out["hidden_states"][-1].requires_grad
    cached.train()
    with torch.no_grad():
        cached([wav])
    assert cached.cache.hits == cached.cache.misses == cached.cache.used_bytes == 0


def test_cache_stops_storing_at_its_budget(monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    _, cached = _experts(monkeypatch, "usad", tiny_checkpoint)
    cached.cache.max_bytes = 1  # full after the first file
    with torch.no_grad():
        cached([tone(0.7, 440.0)])
        used = cached.cache.used_bytes
        out = cached([tone(0.9, 330.0), tone(0.7, 440.0)])
    assert used > 0 and cached.cache.used_bytes == used and cached.cache.misses == 1
    assert out["hidden_states"][0].shape[0] == 2


def test_bad_budget_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    for text in ("lots", "-5", "inf"):
        monkeypatch.setenv(FEATURE_CACHE_ENV, text)
        with pytest.raises(UsadUpstreamError, match=f"{FEATURE_CACHE_ENV}='{text}': expected a number of megabytes"):
            usad(str(tiny_checkpoint))
    proc = subprocess.run([sys.executable, "-m", "downstream_recipes.cli", "superb", "run", "--task", "KS", "-u", "fbank",
                           "--data", ".", "--feature-cache-mb", "-1"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "--feature-cache-mb: expected a number of megabytes >= 0, got '-1'" in proc.stderr
