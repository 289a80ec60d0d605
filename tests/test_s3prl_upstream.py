"""USAD as an s3prl upstream: expert, hub registration, S3PRLUpstream, Featurizer, run_downstream."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tone
from usad_upstream import build_model, load_model, save_checkpoint
from usad_upstream.upstream import UpstreamExpert, register_s3prl_upstreams, usad, usad_local

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def expert(tiny_checkpoint: Path) -> UpstreamExpert:
    return usad(str(tiny_checkpoint)).eval()


def _alone(expert: UpstreamExpert, wav: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [h[0] for h in expert([wav])["hidden_states"]]


def test_expert_padded_batch_matches_items_alone(expert: UpstreamExpert) -> None:
    wavs = [tone(1.0, 300.0), tone(0.61, 500.0)]
    with torch.no_grad():
        out = expert(wavs)
    layers = expert.model.config.layers
    hidden = out["hidden_states"]
    assert len(hidden) == layers + 1  # input embedding + one per block
    frames = [(len(w) - 400) // 320 + 1 for w in wavs]
    assert all(h.shape == (2, frames[0], expert.model.config.dim) for h in hidden)
    assert out["last_hidden_state"].shape == hidden[-1].shape
    for i, wav in enumerate(wavs):
        for batched, single in zip(hidden, _alone(expert, wav)):
            torch.testing.assert_close(batched[i, : frames[i]], single, atol=1e-4, rtol=1e-4)
    assert not hidden[0][1, frames[1]:].any()  # padding frames of the embedding are zero
    assert not torch.equal(hidden[0], hidden[1])


def test_expert_embedding_over_chunked_windows(tmp_path: Path) -> None:
    """Inputs longer than max_fbank_frames are encoded window by window; items end in different windows."""
    torch.manual_seed(1)
    path = save_checkpoint(build_model("tiny", layers=2, max_fbank_frames=100), tmp_path / "win.safetensors")
    chunked = usad(str(path)).eval()
    wavs = [tone(2.5, 200.0), tone(0.9, 700.0), tone(1.6, 900.0)]
    with torch.no_grad():
        hidden = chunked(wavs)["hidden_states"]
    for i, wav in enumerate(wavs):
        n = (len(wav) - 400) // 320 + 1
        for batched, single in zip(hidden, _alone(chunked, wav)):
            assert single.shape[0] == n
            torch.testing.assert_close(batched[i, :n], single, atol=1e-4, rtol=1e-4)
            assert not batched[i, n:].any()


def test_downsample_rate_and_hub_names(expert: UpstreamExpert, tiny_checkpoint: Path) -> None:
    assert expert.get_downsample_rates("hidden_states") == 320
    assert expert.get_downsample_rates("last_hidden_state") == 320
    assert {"usad", "usad_local"} <= set(register_s3prl_upstreams())
    import s3prl.hub as hub

    assert hub.usad is usad and hub.usad_local is usad_local and "usad" in hub.options()
    assert isinstance(usad_local(str(tiny_checkpoint)), UpstreamExpert)


def test_clear_errors_for_missing_or_invalid_checkpoint(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match=r"needs a checkpoint.*usad init"):
        usad()
    with pytest.raises(ValueError, match=r"not found.*usad init"):
        usad(str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match=r"not a readable safetensors.*usad init"):
        usad(str(junk))
    with pytest.raises(ValueError, match="URL"):
        usad("https://example.org/model.safetensors")
    with pytest.raises(ValueError, match="carries its own config"):
        usad(str(tiny_checkpoint), model_config="config.yaml")
    with pytest.raises(ValueError, match="1-D waveforms"):
        usad(str(tiny_checkpoint))([torch.zeros(2, 800)])


def test_s3prl_upstream_by_name(tiny_checkpoint: Path) -> None:
    register_s3prl_upstreams()
    from s3prl.nn import S3PRLUpstream

    upstream = S3PRLUpstream("usad", path_or_url=str(tiny_checkpoint)).eval()
    layers = load_model(tiny_checkpoint).config.layers
    assert upstream.num_layers == layers + 1 and upstream.downsample_rates == [320] * (layers + 1)
    lens = torch.tensor([16000, 9000])
    wavs = torch.stack([tone(1.0), torch.cat([tone(9000 / 16000), torch.zeros(7000)])])
    with torch.no_grad():
        all_hs, all_lens = upstream(wavs, lens)
    assert len(all_hs) == layers + 1
    for hs, hs_len in zip(all_hs, all_lens):
        assert hs.shape == (2, 50, 192) and hs_len.tolist() == [50, 29]


@pytest.mark.parametrize("lengths", [[400, 479], [480, 559, 560, 639], [16000, 16079, 16080, 16159, 16160]])
def test_legacy_featurizer_frame_counts(expert: UpstreamExpert, lengths: list[int]) -> None:
    from s3prl.upstream.interfaces import Featurizer

    featurizer = Featurizer(expert, upstream_device="cpu")
    assert featurizer.downsample_rate == 320
    wavs = [torch.randn(n) * 0.1 for n in lengths]
    with torch.no_grad():
        features = featurizer(wavs, expert(wavs))  # asserts |frames - round(N / 320)| < 5 inside
    model_frames = max((n - 400) // 320 + 1 for n in lengths)
    assert [f.shape[0] for f in features] == [min(round(n / 320), model_frames) for n in lengths]


def test_frame_count_within_featurizer_tolerance_for_all_lengths() -> None:
    from s3prl.upstream.interfaces import TOLERABLE_SEQLEN_DIFF

    from usad_upstream.frontend import num_fbank_frames
    from usad_upstream.model import ConvSubsampling

    samples = torch.arange(400, 16000 * 40)
    frames = ConvSubsampling.output_lengths(num_fbank_frames(samples))
    diff = torch.round(samples / 320) - frames
    assert int(diff.min()) >= 0 and int(diff.max()) <= 1 < TOLERABLE_SEQLEN_DIFF


def _run_downstream(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, str(REPO / "downstream_recipes" / "run_downstream.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


def test_run_downstream_example_train_then_evaluate(tmp_path: Path) -> None:
    """s3prl's own runner end to end: train 2 steps on the example task, then evaluate the checkpoint."""
    torch.manual_seed(0)
    micro = build_model("tiny", dim=32, layers=2, heads=2, conv_channels=8)
    ckpt = save_checkpoint(micro, tmp_path / "micro.safetensors")
    expdir = tmp_path / "exp"
    config = REPO / "downstream_recipes" / "superb" / "configs" / "example.yaml"
    train = _run_downstream(
        "-m", "train", "-u", "usad", "-k", str(ckpt), "-d", "example", "-c", str(config), "--device", "cpu", "-p", str(expdir)
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "[Featurizer] - Take a list of 3 features" in train.stdout + train.stderr
    states = expdir / "states-2.ckpt"
    saved = torch.load(states, map_location="cpu", weights_only=False)
    assert saved["Step"] == 2 and saved["Args"].upstream == "usad"
    assert saved["Featurizer"]["weights"].shape == (3,)

    evaluate = _run_downstream("-m", "evaluate", "-e", str(states))
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert f"Resume from {states}" in evaluate.stdout + evaluate.stderr
    assert "test: 2it" in evaluate.stderr  # the example's test split, evaluate_ratio-limited


def test_run_downstream_reports_upstream_errors_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The wrapper hands s3prl's main the arguments (plus --device cpu without CUDA) and turns a
    bad -k into one line and exit status 2 (s3prl's own main is replaced: it changes globals)."""
    import s3prl.run_downstream

    from downstream_recipes import run_downstream

    seen: list[list[str]] = []

    def fake_main() -> None:
        seen.append(list(sys.argv[1:]))
        usad(str(tmp_path / "nope.safetensors"))

    monkeypatch.setattr(s3prl.run_downstream, "main", fake_main)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["run_downstream.py", "-m", "train", "-u", "usad", "-k", "nope"])
    with pytest.raises(SystemExit) as exit_info:
        run_downstream.main()
    assert exit_info.value.code == 2
    assert seen == [["-m", "train", "-u", "usad", "-k", "nope", "--device", "cpu"]]
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("usad-run-downstream: error: usad upstream: checkpoint not found") and "usad init" in err
