"""The batched fbank: exactly torchaudio's kaldi.fbank per item, padding ignored, few operators."""
import pytest
import torch

from usad_upstream.bench import OperatorCounter, per_item_fbank
from usad_upstream.frontend import batch_fbank, kaldi_fbank, num_fbank_frames

from conftest import tone


def ragged_batch(batch: int, max_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Speech-like items (tone + noise, varied level and DC offset) of random lengths."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(400, max_samples + 1, (batch,), generator=gen)
    lens[0] = max_samples
    wavs = torch.zeros(batch, max_samples)
    for i, n in enumerate(lens.tolist()):
        level = 0.02 + 0.5 * float(torch.rand((), generator=gen))
        offset = 0.1 * float(torch.randn((), generator=gen))
        wavs[i, :n] = level * tone(n / 16000, freq=200 + 37 * i) + offset
    return wavs, lens


def with_garbage(wavs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The same batch with NaN, Inf and loud noise where the padding is."""
    padded = torch.arange(wavs.shape[1])[None, :] >= lens[:, None]
    garbage = 1e4 * torch.randn(wavs.shape, generator=torch.Generator().manual_seed(1))
    garbage[0::3] = float("nan")
    garbage[1::3] = float("inf")
    return torch.where(padded, garbage, wavs)


def test_batched_fbank_equals_torchaudio_per_item_whatever_the_padding_holds():
    wavs, lens = ragged_batch(9, 37_123, seed=0)
    feats, frame_lens = batch_fbank(with_garbage(wavs, lens), lens)
    assert torch.equal(frame_lens, num_fbank_frames(lens))
    assert feats.shape == (9, int(frame_lens.max()), 128) and feats.dtype == torch.float32
    for i, n in enumerate(lens.tolist()):
        reference = kaldi_fbank(wavs[i, :n])  # torchaudio.compliance.kaldi.fbank on the item alone
        frames = reference.shape[0]
        assert int(frame_lens[i]) == frames
        assert (feats[i, :frames] - reference).abs().max() < 1e-4
        assert feats[i, frames:].abs().max() == 0 if frames < feats.shape[1] else True
    clean, _ = batch_fbank(wavs, lens)
    assert torch.equal(clean, feats)  # garbage in the padding changes nothing, bit for bit


def test_long_input_in_bounded_passes_equals_one_pass():
    wavs, lens = ragged_batch(3, 50_000, seed=2)
    one_pass, _ = batch_fbank(wavs, lens, batch_frames=1 << 30)
    passes, _ = batch_fbank(wavs, lens, batch_frames=3 * 7)  # 7 frames per item and pass
    assert torch.allclose(passes, one_pass, atol=1e-6)


def test_fbank_stays_fp32_inside_autocast():
    wavs, lens = ragged_batch(2, 8000, seed=3)
    plain, _ = batch_fbank(wavs, lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast, _ = batch_fbank(wavs, lens)
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)


@pytest.mark.parametrize("batch_frames", [None, 1 << 30])  # the CPU default passes, and one pass (the GPU default)
def test_batch_of_16_needs_at_most_a_quarter_of_the_loops_operator_calls(batch_frames):
    wavs, lens = ragged_batch(16, 160_000, seed=4)
    per_item_fbank(wavs, lens), batch_fbank(wavs, lens, batch_frames)  # first calls build cached constants
    with OperatorCounter() as loop:
        per_item_fbank(wavs, lens)
    with OperatorCounter() as batched:
        batch_fbank(wavs, lens, batch_frames)
    assert batched.total * 4 <= loop.total, (batched.total, loop.total)
    assert batched.launches * 4 <= loop.launches, (batched.launches, loop.launches)  # views launch nothing
    assert batched.by_name["aten._fft_r2c"] <= 8  # the passes, not the items
