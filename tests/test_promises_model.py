"""README (Python API): "`model.chunks()` yields the windows for bounded memory". Each window is
the batch's next max_fbank_frames fbank frames, encoded on their own; items that ended before a
window get zeros and length 0 there; no encoder call ever sees more than one window."""
from __future__ import annotations

import pytest
import torch

from conftest import tone
from usad_upstream import build_model
from usad_upstream.frontend import batch_fbank

WINDOW = 100  # fbank frames -> 50 encoder frames


def test_chunks_yield_each_window_of_the_batch_encoded_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", layers=2, dim=64, heads=2, max_fbank_frames=WINDOW).eval()
    wavs = [tone(2.6, 300.0), tone(0.7, 800.0), tone(1.3, 500.0)]  # 258, 68 and 128 fbank frames
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) for w in wavs])
    feats, frame_lens = batch_fbank(batch, lens)
    assert frame_lens.tolist() == [258, 68, 128]
    encoded: list[int] = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda f, n: encoded.append(f.shape[1]) or encode(f, n))
    with torch.inference_mode():
        windows = list(model.chunks(feats, frame_lens))
    assert len(windows) == 3 and max(encoded) <= WINDOW
    monkeypatch.undo()
    for w, part in enumerate(windows):
        start = w * WINDOW
        assert part["x"].shape[0] == len(wavs) and part["x"].shape[1] <= WINDOW // 2
        for i, n in enumerate(frame_lens.tolist()):
            here = max(0, min(WINDOW, n - start))
            if here == 0:  # this item ended in an earlier window
                assert int(part["lengths"][i]) == 0
                assert not part["x"][i].any() and not any(h[i].any() for h in part["hidden_states"] + part["ffn"])
                continue
            with torch.inference_mode():
                alone = model.encode(feats[i : i + 1, start : start + here], torch.tensor([here]))
            t = int(alone["lengths"][0])
            assert int(part["lengths"][i]) == t == (here + 1) // 2
            for key in ("embedding", "x"):
                torch.testing.assert_close(part[key][i, :t], alone[key][0], rtol=1e-5, atol=1e-5)
                assert not part[key][i, t:].any()
            for a, b in zip(part["hidden_states"] + part["ffn"], alone["hidden_states"] + alone["ffn"]):
                torch.testing.assert_close(a[i, :t], b[0], rtol=1e-5, atol=1e-5)
    # the windows laid end to end are what the model's forward returns for the whole batch
    with torch.inference_mode():
        whole = model(batch, lens)
    assert whole["lengths"].tolist() == sum(p["lengths"] for p in windows).tolist()
    for layer in range(2):
        for i, t in enumerate(whole["lengths"].tolist()):
            valid = torch.cat([p["hidden_states"][layer][i, : int(p["lengths"][i])] for p in windows])
            torch.testing.assert_close(whole["hidden_states"][layer][i, :t], valid, rtol=0, atol=0)


def test_a_model_built_or_loaded_inside_inference_mode_runs(tiny_checkpoint) -> None:  # type: ignore[no-untyped-def]
    """Its weights are then inference tensors, which have no version counter (the position-term
    cache keyed on it raised "Inference tensors do not track version counter")."""
    from usad_upstream import load_model

    wav = tone(0.5)[None]
    reference = load_model(tiny_checkpoint)
    with torch.inference_mode():
        want = reference(wav)["x"]
        for model in (load_model(tiny_checkpoint), build_model(reference.config).eval()):
            model.load_state_dict(reference.state_dict())
            torch.testing.assert_close(model(wav)["x"], want, rtol=0, atol=0)
            torch.testing.assert_close(model(wav)["x"], want, rtol=0, atol=0)  # a second call: the cache path
