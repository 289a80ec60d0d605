"""The student's grouped positional convs run as NHWC conv2d views: no transposed copies, the
numbers of the Conv1d they replace."""
import torch

from usad_upstream import build_model
from usad_upstream.model import ConvPositionalEncoder


def test_time_conv_is_the_conv1d_on_a_channels_last_view() -> None:
    torch.manual_seed(0)
    encoder = ConvPositionalEncoder(dim=96, depth=2, kernel=19, groups=16)
    h = torch.randn(3, 41, 96)
    view = h.transpose(1, 2).unsqueeze(2)  # what time_conv hands conv2d: [B, D, 1, T] over h's memory
    assert view.is_contiguous(memory_format=torch.channels_last) and view.data_ptr() == h.data_ptr()
    for conv in encoder.convs:
        with torch.no_grad():
            got = ConvPositionalEncoder.time_conv(conv, h)
            want = conv(h.transpose(1, 2)).transpose(1, 2)
        assert got.shape == (3, 41, 96) and got.is_contiguous()  # [B, T, D] again, no transpose copy
        assert (got - want).abs().max() < 1e-5


def test_pos_conv_padding_stays_outside_each_item() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", layers=1).eval()
    feats = torch.randn(2, 120, 128)
    lens = torch.tensor([120, 57])
    feats[1, 57:] = 0.0  # encode takes zero-padded fbank, as batch_fbank gives it
    with torch.inference_mode():
        together = model.encode(feats, lens)["embedding"]
        alone = model.encode(feats[1:, :57], lens[1:])["embedding"]
    t = alone.shape[1]
    assert (together[1, :t] - alone[0]).abs().max() < 1e-5
    assert together[1, t:].abs().max() == 0


def test_the_student_runs_with_bf16_weights_and_no_autocast() -> None:
    """`usad bench`'s usad_*[bf16] (frozen inference weights in bf16): the fp32 fbank enters the
    convs in the weights' dtype."""
    torch.manual_seed(0)
    model = build_model("tiny", layers=2).eval()
    wavs = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = model(wavs)["x"]
        half = model.to(torch.bfloat16)(wavs)["x"]
    assert half.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(half.float().flatten(), full.flatten(), dim=0) > 0.99
