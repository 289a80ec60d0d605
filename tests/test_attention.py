"""The relative-position attention: every kernel equals a straightforward implementation, the
aligned GPU path builds its bias without copies, and the copies per layer are what they claim."""
import math

import pytest
import torch

from usad_upstream import build_model
from usad_upstream.attention import (
    KERNELS, RelPositionSelfAttention, aligned_bias, aligned_position_scores, attention_kernel, relative_position_bias,
    relative_sinusoids,
)
from usad_upstream.bench import attention_report

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def reference_attention(attn: RelPositionSelfAttention, x: torch.Tensor, pad: "torch.Tensor | None") -> torch.Tensor:
    """Transformer-XL attention written out: for every pair (i, j) the projected sinusoid of the
    offset i - j, gathered explicitly; no shifts, no blocks, no kernels."""
    b, t, d = x.shape
    h, hd = attn.heads, attn.head_dim
    q = attn.q_proj(x).view(b, t, h, hd)
    k = attn.k_proj(x).view(b, t, h, hd)
    v = attn.v_proj(x).view(b, t, h, hd)
    table = attn.pos_proj(relative_sinusoids(t, d, x.device, x.dtype)).view(2 * t - 1, h, hd)  # offsets t-1 .. -(t-1)
    offset = torch.arange(t)[:, None] - torch.arange(t)[None, :]
    rel = table[(t - 1) - offset]  # [t, t, h, hd]: the encoding of offset i - j
    content = torch.einsum("bihd,bjhd->bhij", q + attn.pos_bias_u, k)
    position = torch.einsum("bihd,ijhd->bhij", q + attn.pos_bias_v, rel)
    scores = (content + position) / math.sqrt(hd)
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    out = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)
    return attn.out_proj(out.reshape(b, t, d))


@pytest.mark.parametrize("kernel", ["blocked", "aligned", "flex"])  # cudnn: the aligned path on another backend (GPU)
@pytest.mark.parametrize("t", [1, 7, 8, 37, 130])
def test_every_kernel_equals_the_reference(kernel: str, t: int) -> None:
    torch.manual_seed(t)
    attn = RelPositionSelfAttention(48, 3, dropout=0.0).eval()
    x = torch.randn(3, t, 48)
    lens = torch.tensor([t, max(1, t // 2), max(1, t - 3)])
    pad = torch.arange(t)[None, :] >= lens[:, None]
    attn.kernel = kernel
    with torch.no_grad():
        for key_padding in (None, pad if pad.any() else None):
            got = attn(x, relative_sinusoids(t, 48, x.device, x.dtype), key_padding)
            assert (got - reference_attention(attn, x, key_padding)).abs().max() < 1e-5


def test_gradients_of_the_aligned_path_equal_the_blocked_ones() -> None:
    """The distillation step trains through the aligned path on a GPU (in-place key masking on a
    strided view of the GEMM output): its gradients must be the blocked path's."""
    torch.manual_seed(0)
    attn = RelPositionSelfAttention(48, 3, dropout=0.0)
    x = torch.randn(2, 37, 48)
    pad = torch.arange(37)[None, :] >= torch.tensor([37, 20])[:, None]
    pos = relative_sinusoids(37, 48, x.device, x.dtype)
    grads = {}
    for kernel in ("blocked", "aligned"):
        attn.kernel = kernel
        attn.zero_grad()
        xk = x.clone().requires_grad_()
        (attn(xk, pos, pad) ** 2).sum().backward()
        grads[kernel] = [xk.grad] + [p.grad.clone() for p in attn.parameters()]
    for a, b in zip(grads["blocked"], grads["aligned"]):
        assert (a - b).abs().max() < 1e-5


def test_aligned_bias_is_an_aligned_view_of_one_gemm_output() -> None:
    torch.manual_seed(0)
    for t in (5, 8, 499):
        q_v = torch.randn(2, t, 3, 16)
        p = torch.randn(3, 16, 2 * t - 1)
        scores, lead = aligned_position_scores(q_v, p)
        bias = aligned_bias(scores, lead, t)
        assert bias.shape == (2, 3, t, t)
        assert bias.untyped_storage().data_ptr() == scores.untyped_storage().data_ptr()  # a view: no copy
        assert bias.stride(-1) == 1 and all(s % 8 == 0 for s in bias.stride()[:-1])  # what SDPA takes without padding
        assert bias.storage_offset() % 8 == 0  # 16-byte aligned in bf16
        assert torch.allclose(bias, relative_position_bias(q_v.transpose(1, 2), p), atol=1e-5)


def test_copies_per_layer_on_the_cpu_profiler() -> None:
    rows = {r["kernel"]: r for r in attention_report("tiny", 2, 5.0, torch.device("cpu"), ("blocked", "aligned"), 1)}
    blocked, aligned = rows["blocked"], rows["aligned"]
    b, t, dim, heads = 2, 249, 192, 4
    assert blocked["frames"] == aligned["frames"] == t
    mb = 4 / 2**20  # fp32
    linear = 4 * b * t * dim * mb  # CPU addmm copies each Linear's bias into its output first: not the attention path
    rows_of_q, positions = b * (t + 7) * dim * mb, heads * (dim // heads) * (2 * t + 15) * mb  # [B, T, D]- and [H, d, 2T]-sized
    # blocked: the one bias is written block by block (plus q's row blocks); nothing of its size is copied
    assert blocked["large_copies"] == 0
    assert blocked["bias_mb"] <= blocked["copy_mb"] - linear <= blocked["bias_mb"] + rows_of_q
    # aligned: no [B, H, T, T] copy at all, only q and p padded to the aligned geometry
    assert aligned["large_copies"] == 0
    assert aligned["copy_mb"] - linear <= rows_of_q + positions < 0.5 * aligned["bias_mb"]


@pytest.mark.parametrize("kernel", ["aligned", "flex"])
def test_padded_batch_matches_items_run_alone_with_the_gpu_kernels(kernel: str) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", layers=2).eval()
    lens = torch.tensor([24000, 9013, 401])
    batch = torch.randn(3, 24000) * 0.1
    with torch.inference_mode(), attention_kernel(model, kernel):
        out = model(batch, lens)
        for i, n in enumerate(lens.tolist()):
            alone = model(batch[i : i + 1, :n])
            t = int(alone["lengths"][0])
            for a, b in zip(alone["hidden_states"], out["hidden_states"]):
                assert (a[0] - b[i, :t]).abs().max() < 1e-4


def test_position_cache_follows_the_autocast_state() -> None:
    torch.manual_seed(0)
    attn = RelPositionSelfAttention(32, 2, dropout=0.0).eval()
    x = torch.randn(1, 9, 32)
    pos = relative_sinusoids(9, 32, x.device, x.dtype)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attn(x, pos, None)  # caches bf16 positions
        got = attn(x, pos, None)  # fp32 again: must not reuse them
    assert got.dtype == torch.float32
    assert (got - reference_attention(attn, x, None)).abs().max() < 1e-5


def test_unknown_kernel_is_a_clear_error() -> None:
    model = build_model("tiny", layers=1)
    assert "auto" in KERNELS
    with pytest.raises(ValueError, match="unknown attention kernel 'fast'"):
        with attention_kernel(model, "fast"):
            pass
    attn = RelPositionSelfAttention(32, 2, dropout=0.1).train()
    attn.kernel = "flex"
    with pytest.raises(ValueError, match="no attention dropout"):
        attn(torch.randn(1, 4, 32), relative_sinusoids(4, 32, torch.device("cpu"), torch.float32), None)
