"""WavLM (Base, Base+, Large) as a teacher, read from the original checkpoint file (a dict with
"cfg" and "model", as s3prl's `wavlm_local` reads it) into s3prl's own WavLM model class.

Padding-aware: s3prl's `extract_features` derives the frame mask by reshaping the sample mask,
which marks frames whose 400-sample window runs into the padding as valid, and the Base models'
first conv layer group-normalises each channel over the whole (padded) time axis. Here the conv
feature extractor runs per item where it normalises over time, the frame mask comes from the
exact conv output lengths, and the transformer gets that mask; a padded batch then gives each
item what it gets alone.

Speed (frozen weights): the positional conv's weight norm is folded once at construction (the
same weight the hook recomputed every call); `cast_frozen(torch.bfloat16)` keeps the weights in
bf16 and runs without autocast (no per-call casts); `use_fft_pos_conv()` runs the k=128 grouped
positional conv through FFTs and `use_flex_attention()` the gated relative-position attention
through FlexAttention (GPU options of `usad bench`; the defaults are s3prl's own modules).
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import flex_attention_for
from ..frontend import check_waveforms
from .base import Teacher, TeacherOutput, check_target, frame_mask, load_torch_file

SAMPLE_RATE = 16000
HOW_TO_GET = (
    "WavLM expects the original checkpoint file (e.g. WavLM-Base+.pt from microsoft/unilm, or s3prl's "
    "converted wavlm_base_plus.pt): a dict with 'cfg' and 'model'"
)


S3PRL_WAVLM_DIR = "USAD_S3PRL_WAVLM_DIR"  # a folder holding s3prl's upstream/wavlm/WavLM.py and modules.py


def _s3prl_wavlm():  # type: ignore[no-untyped-def]
    """s3prl's WavLM module, imported directly (no s3prl.hub, which needs the compat patches).

    Where s3prl is not installed (a GPU machine without network), the two files the model class
    needs (WavLM.py and modules.py: torch and numpy only) can be named by the environment
    variable USAD_S3PRL_WAVLM_DIR; they are imported as a package of their own.
    """
    try:
        from s3prl.upstream.wavlm import WavLM as module

        return module
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("s3prl") or not os.environ.get(S3PRL_WAVLM_DIR):
            raise
    folder = Path(os.environ[S3PRL_WAVLM_DIR])
    if not (folder / "WavLM.py").is_file() or not (folder / "modules.py").is_file():
        raise ValueError(f"{S3PRL_WAVLM_DIR}={folder}: expected s3prl's WavLM.py and modules.py in it")
    name = "_usad_s3prl_wavlm"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    module_name = f"{name}.WavLM"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, folder / "WavLM.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def load_wavlm(path: "str | os.PathLike[str]", trust_pickle: bool = False) -> torch.nn.Module:
    """Rebuild s3prl's `WavLM` from an original checkpoint file; clear errors for other files."""
    ckpt = load_torch_file(path, "WavLM", trust_pickle)
    if not isinstance(ckpt, Mapping) or "cfg" not in ckpt or "model" not in ckpt:
        keys = sorted(map(str, ckpt))[:6] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        hint = ""
        if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
            hint = " (it looks like a PyTorch-Lightning checkpoint, e.g. ATST-Frame: use kind 'atst_frame')"
        elif isinstance(ckpt, Mapping) and any(str(k).startswith(("wavlm.", "encoder.", "feature_extractor.")) for k in ckpt):
            hint = " (it looks like a bare state dict, e.g. a Hugging Face pytorch_model.bin, without the config)"
        raise ValueError(f"{path}: not an original WavLM checkpoint (found {keys}){hint}; {HOW_TO_GET}")
    cfg = ckpt["cfg"]
    cfg = dict(cfg) if isinstance(cfg, Mapping) else dict(vars(cfg))
    module = _s3prl_wavlm()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's notice about the old weight_norm API
        model = module.WavLM(module.WavLMConfig(cfg))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise ValueError(f"{path}: WavLM weights do not match its 'cfg': {' '.join(first)}") from None
    return model.eval()


class WavLMTeacher(Teacher):
    """WavLM targets at 50 Hz: each layer's fc2 output before the residual add (default) or each
    layer's output (the last one after the encoder's final norm for pre-norm models, as s3prl)."""

    def __init__(self, model: torch.nn.Module, target: str = "ffn") -> None:
        super().__init__()
        self.target = check_target(target)
        self.model = model
        cfg = model.cfg
        self.conv_layers = [(int(k), int(s)) for _, k, s in eval(cfg.conv_feature_layers)]  # noqa: S307 (WavLM's own format)
        stride = 1
        for _, s in self.conv_layers:
            stride *= s
        self.frame_rate = SAMPLE_RATE / stride
        self.num_layers = len(model.encoder.layers)
        self.dim = cfg.encoder_embed_dim
        self._captured: list[torch.Tensor] = []
        for layer in model.encoder.layers:
            hooked = layer.fc2 if target == "ffn" else layer
            hooked.register_forward_hook(self._capture)
        self.compute_dtype: "torch.dtype | None" = None  # set by cast_frozen
        self.freeze()
        fold_weight_norm(model)

    def _capture(self, module: torch.nn.Module, inputs: object, output: object) -> None:
        out = output[0] if isinstance(output, tuple) else output
        self._captured.append(out.transpose(0, 1))  # the encoder runs time-major

    def num_frames(self, lens: torch.Tensor) -> torch.Tensor:
        """Conv feature extractor output length (no padding): floor((n - k) / s) + 1 per layer."""
        for k, s in self.conv_layers:
            lens = torch.div(lens - k, s, rounding_mode="floor") + 1
        return lens

    def _conv_features(self, wavs: torch.Tensor, lens: torch.Tensor, frame_lens: torch.Tensor) -> torch.Tensor:
        """[B, T, C] conv features, per item when the first conv block normalises over time."""
        extractor = self.model.feature_extractor
        if self.model.cfg.extractor_mode == "layer_norm" or int(lens.min()) == int(lens.max()):
            return extractor(wavs).transpose(1, 2)
        parts = [extractor(wavs[i : i + 1, :n]).transpose(1, 2)[0] for i, n in enumerate(lens.tolist())]
        out = parts[0].new_zeros(len(parts), int(frame_lens.max()), parts[0].shape[-1])
        for i, part in enumerate(parts):
            out[i, : part.shape[0]] = part
        return out

    def cast_frozen(self, dtype: torch.dtype) -> "WavLMTeacher":
        """Hold the frozen weights in `dtype` (bf16 on a GPU) and run without autocast: no
        per-call weight casts. The waveform is cast at the model's entry; s3prl's Fp32GroupNorm /
        Fp32LayerNorm still normalise in fp32. (Numbers differ from fp32 weights at bf16 level.)"""
        self.model.to(dtype)
        self.compute_dtype = dtype
        return self

    def use_fft_pos_conv(self) -> "WavLMTeacher":
        """Run the positional conv (kernel 128, 16 groups) as FFT convolution (see FFTConv1d)."""
        conv, *rest = self.model.encoder.pos_conv
        if not isinstance(conv, FFTConv1d):
            self.model.encoder.pos_conv = nn.Sequential(FFTConv1d(conv), *rest)
        return self

    def use_flex_attention(self) -> "WavLMTeacher":
        """Run every layer's attention with its gated relative-position bias through FlexAttention:
        the score_mod adds gate[b, h, i] * table[h, j - i + T - 1], so no [B*H, T, T] bias (nor its
        per-layer gated copy) is built. No attention dropout: inference only."""
        for layer in self.model.encoder.layers:
            layer.self_attn.forward = types.MethodType(_flex_wavlm_attention, layer.self_attn)
        return self

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        lens = check_waveforms(wavs, wav_lens)
        wavs = wavs[:, : int(lens.max())].masked_fill(~frame_mask(lens, int(lens.max())), 0.0)
        if self.model.cfg.normalize:
            wavs = torch.stack([F.pad(F.layer_norm(w[:n], (n,)), (0, wavs.shape[1] - n)) for w, n in zip(wavs, lens.tolist())])
        if self.compute_dtype is None:
            return self._extract(wavs, lens)
        with torch.autocast(wavs.device.type, enabled=False):
            return self._extract(wavs.to(self.compute_dtype), lens)

    def _extract(self, wavs: torch.Tensor, lens: torch.Tensor) -> TeacherOutput:
        frame_lens = self.num_frames(lens)
        x = self.model.layer_norm(self._conv_features(wavs, lens, frame_lens))
        if self.model.post_extract_proj is not None:
            x = self.model.post_extract_proj(x)
        pad = None if int(frame_lens.min()) == x.shape[1] else ~frame_mask(frame_lens, x.shape[1])
        self._captured = []
        try:
            with warnings.catch_warnings():
                # s3prl passes a bool key-padding mask beside its float position bias; torch warns
                warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
                final, _ = self.model.encoder(x, padding_mask=pad)
            layers = self._captured
        finally:
            self._captured = []
        if self.target == "hidden_states":
            layers[-1] = final
        valid = frame_mask(frame_lens, x.shape[1])[..., None]
        return TeacherOutput(
            layers=[layer.masked_fill(~valid, 0.0) for layer in layers], lengths=frame_lens, frame_rate=self.frame_rate
        )


def fold_weight_norm(model: nn.Module) -> None:
    """Replace weight-normalised convs (s3prl's positional conv) by plain ones holding the same
    weight g * v / ||v||: computed once instead of in a hook before every call (frozen weights)."""
    from torch.nn.utils.weight_norm import WeightNorm

    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    torch.nn.utils.remove_weight_norm(module, hook.name)


class FFTConv1d(nn.Module):
    """A grouped, zero-padded Conv1d (cross-correlation) computed through real FFTs: per group
    and frequency a [out, in] complex matrix product instead of a 128-tap sliding window
    (WavLM's positional conv: ~50x fewer multiply-adds). Computed in fp32 (cuFFT has no bf16),
    returned in the input's dtype; the same output length as the conv it replaces."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if conv.stride != (1,) or conv.dilation != (1,) or conv.padding_mode != "zeros":
            raise ValueError("FFTConv1d takes a stride-1, undilated, zero-padded Conv1d")
        self.groups, self.padding = conv.groups, conv.padding[0]
        self.kernel = conv.kernel_size[0]
        self.weight = nn.Parameter(conv.weight.detach().float(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().float(), requires_grad=False)
        self._spectrum: "tuple[tuple, torch.Tensor] | None" = None

    def _weight_spectrum(self, n: int) -> torch.Tensor:
        key = (n, self.weight.device)
        if self._spectrum is None or self._spectrum[0] != key:
            out, per_group, _ = self.weight.shape
            w = self.weight.float().view(self.groups, out // self.groups, per_group, self.kernel)
            self._spectrum = (key, torch.fft.rfft(w, n=n).conj())  # correlation = product with conj
        return self._spectrum[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, channels, t = x.shape
        out_len = t + 2 * self.padding - self.kernel + 1
        n = t + 2 * self.padding  # no wrap-around: the last output reads sample out_len - 1 + kernel - 1 < n
        padded = F.pad(x.float(), (self.padding, self.padding))
        spectrum = torch.fft.rfft(padded.view(b, self.groups, channels // self.groups, n), n=n)
        mixed = torch.einsum("bgcf,gocf->bgof", spectrum, self._weight_spectrum(n))
        y = torch.fft.irfft(mixed, n=n)[..., :out_len].reshape(b, -1, out_len)
        if self.bias is not None:
            y = y + self.bias.float()[:, None]
        return y.to(x.dtype)


def _flex_wavlm_attention(self, query, key=None, value=None, key_padding_mask=None, need_weights=False,  # type: ignore[no-untyped-def]
                          attn_mask=None, position_bias=None, **unused):
    """s3prl's MultiheadAttention.forward (self-attention, inference) through FlexAttention.

    WavLM's bias is table[h, bucket(j - i)] scaled per query by the gate
    a * (b * grep_a - 1) + 2 with (a, b) = sigmoid of grep_linear over the layer input's per-head
    slices; layer 1 builds the table and hands it on as `position_bias` ([H, 2T-1] here, by
    offset j - i + T - 1), as s3prl hands on its [B*H, T, T] tensor."""
    if attn_mask is not None or self.training:
        raise ValueError("the FlexAttention path of WavLM is for inference without an extra attention mask")
    t, b, dim = query.shape
    x = query.transpose(0, 1)
    heads, head_dim = self.num_heads, self.head_dim

    def split(proj: nn.Linear) -> torch.Tensor:
        return proj(x).view(b, t, heads, head_dim).transpose(1, 2)

    q, k, v = split(self.q_proj), split(self.k_proj), split(self.v_proj)
    if position_bias is None and self.has_relative_attention_bias:
        offsets = torch.arange(-(t - 1), t)  # on the CPU, as s3prl's compute_bias buckets them
        buckets = self._relative_positions_bucket(offsets, bidirectional=True).to(query.device)
        position_bias = self.relative_attention_bias(buckets).t().to(q.dtype)  # [H, 2T-1]
    gate = None
    if position_bias is not None and self.gru_rel_pos:
        per_head = x.view(b, t, heads, head_dim).transpose(1, 2)
        gate_a, gate_b = torch.sigmoid(self.grep_linear(per_head).view(b, heads, t, 2, 4).sum(-1)).chunk(2, dim=-1)
        gate = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0)[..., 0]  # [B, H, T]
    table = position_bias

    def score_mod(score, bi, hi, i, j):  # type: ignore[no-untyped-def]
        i, j = i.clamp(0, t - 1), j.clamp(0, t - 1)
        if table is not None:
            bias = table[hi, j - i + t - 1]
            score = score + (bias if gate is None else gate[bi, hi, i] * bias)
        if key_padding_mask is None:
            return score
        return torch.where(key_padding_mask[bi, j], -math.inf, score)

    out = flex_attention_for(query.device)(q, k, v, score_mod=score_mod)
    out = self.out_proj(out.transpose(1, 2).reshape(b, t, dim).transpose(0, 1))
    return out, None, position_bias
