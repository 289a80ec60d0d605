"""README (Recipes): "Other s3prl upstreams (fbank, wavlm_local, ...) ignore" --feature-cache-mb /
USAD_FEATURE_CACHE_MB. With the budget set, s3prl's own upstreams still run their model on every
call and give what they give without it, while the usad upstream, in the same process, caches."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tone
from usad_upstream.teachers.fixtures import write_wavlm_checkpoint
from usad_upstream.upstream import register_s3prl_upstreams
from usad_upstream.upstream.cache import FEATURE_CACHE_ENV


def _counting(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


def test_only_the_usad_upstreams_cache_features(tmp_path: Path, tiny_checkpoint: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    register_s3prl_upstreams()
    import s3prl.hub as hub

    wavlm = write_wavlm_checkpoint(tmp_path / "wavlm.pt", encoder_layers=2, encoder_embed_dim=64,
                                   encoder_ffn_embed_dim=128, encoder_attention_heads=2,
                                   conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2")
    wavs = [tone(1.0, 300.0), tone(0.6, 700.0)]
    monkeypatch.delenv(FEATURE_CACHE_ENV, raising=False)
    plain = {"fbank": hub.fbank().eval(), "wavlm_local": hub.wavlm_local(str(wavlm)).eval()}
    with torch.no_grad():
        want = {name: up(wavs)["hidden_states"] for name, up in plain.items()}
    monkeypatch.setenv(FEATURE_CACHE_ENV, "64")
    budgeted = {"fbank": hub.fbank().eval(), "wavlm_local": hub.wavlm_local(str(wavlm)).eval(),
                "usad": hub.usad(str(tiny_checkpoint)).eval()}
    inner = {"fbank": budgeted["fbank"].extracter, "wavlm_local": budgeted["wavlm_local"].model.feature_extractor,
             "usad": budgeted["usad"].model}
    calls = {name: _counting(module) for name, module in inner.items()}
    with torch.no_grad():
        for _ in range(3):  # the same files again, as every epoch of a probe
            got = {name: up(wavs)["hidden_states"] for name, up in budgeted.items()}
            for name in plain:
                for a, b in zip(want[name], got[name]):
                    torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert len(calls["wavlm_local"]) == 3 and len(calls["fbank"]) == 3 * len(wavs)  # recomputed every time (fbank: per file)
    assert len(calls["usad"]) == 2  # each file once, alone; then from the cache
    assert not any(hasattr(budgeted[name], "cache") for name in plain)
