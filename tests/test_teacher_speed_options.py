"""The frozen teachers' speed options keep their numbers: weight norm folded (bit for bit), the
FFT positional conv and WavLM's FlexAttention path (fp32, 1e-5), bf16 weights without autocast;
and the WavLM class imports from s3prl's two files where s3prl is not installed."""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from usad_upstream.teachers import build_teacher
from usad_upstream.teachers.fixtures import write_atst_checkpoint, write_wavlm_checkpoint
from usad_upstream.teachers.wavlm import FFTConv1d, fold_weight_norm, load_wavlm

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
SMALL_WAVLM = dict(
    encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
    conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", conv_pos=32, conv_pos_groups=4,
)


@pytest.fixture(scope="module")
def wavlm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wavlm_checkpoint(tmp_path_factory.mktemp("w") / "wavlm.pt", **SMALL_WAVLM)


def ragged() -> tuple[torch.Tensor, torch.Tensor]:
    wavs = 0.1 * torch.randn(3, 20000, generator=torch.Generator().manual_seed(0))
    return wavs, torch.tensor([20000, 13001, 7000])


def test_weight_norm_folds_into_the_same_weight(wavlm_ckpt: Path) -> None:
    model = load_wavlm(wavlm_ckpt)
    conv = model.encoder.pos_conv[0]
    x = torch.randn(2, 64, 50)
    with torch.no_grad():
        before = conv(x)
        fold_weight_norm(model)
        after = conv(x)
    assert torch.equal(before, after)  # g * v / ||v|| computed once is the weight the hook computed
    assert not conv._forward_pre_hooks and "weight_g" not in dict(conv.named_parameters())
    teacher = build_teacher({"kind": "wavlm", "path": str(wavlm_ckpt)})
    assert "weight_g" not in dict(teacher.model.encoder.pos_conv[0].named_parameters())


@pytest.mark.parametrize("kernel, groups, length", [(128, 16, 499), (32, 4, 51), (16, 4, 7)])
def test_fft_conv_equals_the_grouped_conv(kernel: int, groups: int, length: int) -> None:
    torch.manual_seed(kernel)
    conv = nn.Conv1d(64, 64, kernel, padding=kernel // 2, groups=groups)
    x = torch.randn(2, 64, length)
    with torch.no_grad():
        want, got = conv(x), FFTConv1d(conv)(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-5 * max(1.0, want.abs().max().item())


def test_fft_pos_conv_and_flex_attention_keep_the_teachers_outputs(wavlm_ckpt: Path) -> None:
    wavs, lens = ragged()
    reference = build_teacher({"kind": "wavlm", "path": str(wavlm_ckpt), "target": "hidden_states"})(wavs, lens)
    for options in (("fft",), ("flex",), ("fft", "flex")):
        teacher = build_teacher({"kind": "wavlm", "path": str(wavlm_ckpt), "target": "hidden_states"})
        if "fft" in options:
            teacher.use_fft_pos_conv()
        if "flex" in options:
            teacher.use_flex_attention()  # the eager FlexAttention on a CPU: the same score_mod as compiled
        out = teacher(wavs, lens)
        assert torch.equal(out.lengths, reference.lengths)
        for got, want in zip(out.layers, reference.layers):
            assert (got - want).abs().max() < 1e-5, options


def test_bf16_weights_run_without_autocast(wavlm_ckpt: Path, tmp_path: Path) -> None:
    wavs, lens = ragged()
    atst_path = write_atst_checkpoint(tmp_path / "atst.ckpt", dim=64, depth=2)
    for spec in ({"kind": "wavlm", "path": str(wavlm_ckpt)}, {"kind": "atst_frame", "path": str(atst_path)}):
        full = build_teacher(spec)(wavs, lens)
        teacher = build_teacher(spec).cast_frozen(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer's region: the teacher turns it off
            half = teacher(wavs, lens)
        assert all(p.dtype == torch.bfloat16 for p in (teacher.model if spec["kind"] == "wavlm" else teacher.encoder).parameters())
        assert torch.equal(half.lengths, full.lengths)
        for got, want in zip(half.layers, full.layers):
            assert got.dtype == torch.bfloat16
            cosine = torch.nn.functional.cosine_similarity(got.float().flatten(), want.flatten(), dim=0)
            assert cosine > 0.99


def test_wavlm_imports_from_s3prls_two_files_without_s3prl(wavlm_ckpt: Path, tmp_path: Path) -> None:
    spec = importlib.util.find_spec("s3prl")
    source = Path(list(spec.submodule_search_locations)[0]) / "upstream" / "wavlm"
    folder = tmp_path / "s3prl_wavlm"
    folder.mkdir()
    for name in ("WavLM.py", "modules.py"):
        shutil.copy(source / name, folder / name)
    wavs, lens = ragged()
    want = build_teacher({"kind": "wavlm", "path": str(wavlm_ckpt)})(wavs, lens).layers[-1]
    torch.save((wavs, lens, want), tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        "sys.modules['s3prl'] = None  # not installed, as on the GPU machine\n"
        "from usad_upstream.teachers import build_teacher\n"
        f"wavs, lens, want = torch.load({str(tmp_path / 'io.pt')!r})\n"
        f"got = build_teacher({{'kind': 'wavlm', 'path': {str(wavlm_ckpt)!r}}})(wavs, lens).layers[-1]\n"
        "assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()\n"
    )
    env = {"USAD_S3PRL_WAVLM_DIR": str(folder), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    env.pop("USAD_S3PRL_WAVLM_DIR")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "s3prl" in result.stderr  # without the folder: the import error itself
