"""WavLM (Base, Base+, Large) as a teacher, read from the original checkpoint file (a dict with
"cfg" and "model", as s3prl's `wavlm_local` reads it) into s3prl's own WavLM model class.

Padding-aware: s3prl's `extract_features` derives the frame mask by reshaping the sample mask,
which marks frames whose 400-sample window runs into the padding as valid, and the Base models'
first conv layer group-normalises each channel over the whole (padded) time axis. Here the conv
feature extractor runs per item where it normalises over time, the frame mask comes from the
exact conv output lengths, and the transformer gets that mask; a padded batch then gives each
item what it gets alone.
"""
from __future__ import annotations

import os
import warnings
from typing import Mapping

import torch
import torch.nn.functional as F

from ..frontend import check_waveforms
from .base import Teacher, TeacherOutput, check_target, frame_mask, load_torch_file

SAMPLE_RATE = 16000
HOW_TO_GET = (
    "WavLM expects the original checkpoint file (e.g. WavLM-Base+.pt from microsoft/unilm, or s3prl's "
    "converted wavlm_base_plus.pt): a dict with 'cfg' and 'model'"
)


def _s3prl_wavlm():  # type: ignore[no-untyped-def]
    """s3prl's WavLM module, imported directly (no s3prl.hub, which needs the compat patches)."""
    from s3prl.upstream.wavlm import WavLM as module

    return module


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
        self.freeze()

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

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        lens = check_waveforms(wavs, wav_lens)
        wavs = wavs[:, : int(lens.max())].masked_fill(~frame_mask(lens, int(lens.max())), 0.0)
        if self.model.cfg.normalize:
            wavs = torch.stack([F.pad(F.layer_norm(w[:n], (n,)), (0, wavs.shape[1] - n)) for w, n in zip(wavs, lens.tolist())])
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
