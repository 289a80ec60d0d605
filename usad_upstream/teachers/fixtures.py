"""Randomly initialised teacher checkpoints in the ORIGINAL on-disk formats, for tests, benchmarks
and demos where the released weights cannot be downloaded.

- ATST-Frame: a PyTorch-Lightning .ckpt like atstframe_base.ckpt: `state_dict` with the student
  and teacher branches (`model.{student,teacher}.encoder.*`, `.projector.*`, student
  `.predictor.*`), `hyper_parameters`, `epoch`, `global_step`, `pytorch-lightning_version`.
- WavLM: a dict {"cfg": WavLMConfig fields, "model": state dict} like WavLM-Base+.pt.
- MuQ: the hub-mixin folder MuQ.save_pretrained writes (config.json + model.safetensors), like
  OpenMuQ/MuQ-large-msd-iter, with the muq package's own class.
- Whisper: an openai-whisper .pt like large-v3.pt, a transformers folder like
  openai/whisper-large-v3, or an Audio Flamingo 3 folder like nvidia/audio-flamingo-3-hf.
Defaults are the real sizes (Base, MuQ-large, Whisper Large-v3); smaller ones are for fast tests.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..checkpoint import atomic_write
from .atst import ATSTConfig, ATSTFrameEncoder
from .wavlm import _s3prl_wavlm

# The WavLM Base+ configuration (WavLM paper / s3prl's WavLMConfig field names).
WAVLM_BASE_PLUS_CFG: dict = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "feature_grad_mult": 0.1,
    "normalize": False,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05,
    "dropout_input": 0.1,
    "dropout_features": 0.1,
    "mask_length": 10,
    "mask_prob": 0.8,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
}


def _byol_mlp(prefix: str, in_dim: int, hidden: int, out_dim: int) -> dict[str, torch.Tensor]:
    """audiossl's 2-layer BYOL MLP: Linear(no bias) -> BatchNorm1d -> ReLU -> Linear(no bias)."""
    bn = nn.BatchNorm1d(hidden)
    state = {f"{prefix}.0.weight": nn.Linear(in_dim, hidden, bias=False).weight.detach()}
    state.update({f"{prefix}.1.{k}": v for k, v in bn.state_dict().items()})
    state[f"{prefix}.3.weight"] = nn.Linear(hidden, out_dim, bias=False).weight.detach()
    return state


def write_atst_checkpoint(
    path: "str | os.PathLike[str]", dim: int = 768, depth: int = 12, seed: int = 0, mlp_hidden: int = 4096
) -> Path:
    """Write a random ATST-Frame Lightning checkpoint; student and teacher encoders differ, so a
    loader that picks the wrong branch is caught. heads = dim / 64 as in the released models."""
    if dim % 64:
        raise ValueError(f"ATST-Frame width must be a multiple of the 64-d heads, got {dim}")
    torch.manual_seed(seed)
    config = ATSTConfig(dim=dim, depth=depth, heads=dim // 64, mlp_dim=4 * dim)
    state: dict[str, torch.Tensor] = {}
    for branch in ("student", "teacher"):
        encoder = ATSTFrameEncoder(config)
        for module in encoder.modules():  # audiossl's init: truncated normal weights, zero biases
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        state.update({f"model.{branch}.encoder.{k}": v for k, v in encoder.state_dict().items()})
        state.update(_byol_mlp(f"model.{branch}.projector", dim, mlp_hidden, 256))
    state.update(_byol_mlp("model.student.predictor", 256, mlp_hidden, 256))
    arch = {384: "small", 768: "base"}.get(dim, f"custom{dim}")
    ckpt = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "1.9.5",
        "state_dict": state,
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "arch": arch, "learning_rate": 5e-4, "warmup_steps": 1300, "max_steps": 39010, "ema": 0.99,
            "symmetric": True, "pos_type": "cut", "avg_blocks": 0, "patch_embed": "Linear",
            "patch_h": 64, "patch_w": 4, "n_mels": 64, "nprompt": 0,
        },
    }
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    return Path(path)


def write_wavlm_checkpoint(path: "str | os.PathLike[str]", seed: int = 0, **cfg_overrides: object) -> Path:
    """Write a random WavLM checkpoint {"cfg", "model"}; Base+ unless `cfg_overrides` say otherwise."""
    module = _s3prl_wavlm()
    unknown = set(cfg_overrides) - set(vars(module.WavLMConfig()))
    if unknown:
        raise ValueError(f"unknown WavLM config fields {sorted(unknown)}")
    cfg = {**WAVLM_BASE_PLUS_CFG, **cfg_overrides}
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = module.WavLM(module.WavLMConfig(cfg))
    ckpt = {"cfg": cfg, "model": model.state_dict()}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    return Path(path)


# MuQ-large's Conformer settings (muq's pretraining recipe, the fields transformers'
# Wav2Vec2ConformerEncoder reads; hidden_size and num_hidden_layers come from encoder_dim / depth)
# and its log-mel statistics.
MUQ_LARGE_W2V2: dict = {
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "swish",
    "position_embeddings_type": "rotary",
    "rotary_embedding_base": 10000,
    "conv_depthwise_kernel_size": 31,
    "layer_norm_eps": 1e-5,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "conformer_conv_dropout": 0.1,
    "feat_proj_dropout": 0.1,
    "layerdrop": 0.0,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "feat_extract_activation": "gelu",
    "max_source_positions": 5000,
}
MUQ_LARGE_STAT: dict = {
    "melspec_2048_cnt": 14282760192,
    "melspec_2048_mean": 6.768444971712967,
    "melspec_2048_std": 18.417922652295623,
}
# openai-whisper's ModelDimensions of large-v3.
WHISPER_LARGE_V3: dict = {
    "n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 1280, "n_audio_head": 20, "n_audio_layer": 32,
    "n_vocab": 51866, "n_text_ctx": 448, "n_text_state": 1280, "n_text_head": 20, "n_text_layer": 32,
}
WHISPER_FORMATS = ("openai", "transformers", "af3")


def _write_folder(path: "str | os.PathLike[str]", write: Callable[[Path], None]) -> Path:
    """Call write(tmp_dir), then rename it to `path`: readers never see a half-written folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} exists and is not an empty folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _randomise_muq(model: nn.Module) -> None:
    """Fresh weights from the current torch seed: MuQModel seeds torch with a constant while it is
    built, so without this every seed gives the same model. Batch norms get non-trivial running
    statistics, so a teacher that left eval mode would be caught."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
        elif hasattr(module, "reset_parameters") and not list(module.children()):
            module.reset_parameters()
    nn.init.normal_(model.model.cls_token)


def write_muq_checkpoint(
    path: "str | os.PathLike[str]", seed: int = 0, w2v2_overrides: "Optional[dict]" = None, **config_overrides: object
) -> Path:
    """Write a random MuQ checkpoint folder with the muq package's own MuQ.save_pretrained:
    MuQ-large (1024 x 12 Conformer, 25 Hz) unless `config_overrides` (MuQConfig fields) or
    `w2v2_overrides` (Conformer fields) say otherwise."""
    from ..compat import import_muq

    muq = import_muq()
    unknown = set(config_overrides) - {f.name for f in fields(muq.MuQConfig)}
    if unknown:
        raise ValueError(f"unknown MuQConfig fields {sorted(unknown)}")
    config = {"stat": dict(MUQ_LARGE_STAT), "w2v2_config": {**MUQ_LARGE_W2V2, **(w2v2_overrides or {})}, **config_overrides}
    model = muq.MuQ(muq.MuQConfig(**config))
    torch.manual_seed(seed)
    _randomise_muq(model)
    return _write_folder(path, lambda tmp: model.save_pretrained(str(tmp)))


def write_whisper_checkpoint(
    path: "str | os.PathLike[str]", format: str = "openai", seed: int = 0, **dims_overrides: int
) -> Path:
    """Write a random Whisper-class checkpoint; sizes are openai's ModelDimensions (Large-v3
    unless `dims_overrides` say otherwise). Formats:
    - "openai": torch.save({"dims", "model_state_dict"}) in fp16, like large-v3.pt (whisper.model.Whisper);
    - "transformers": a WhisperForConditionalGeneration folder (config.json, model.safetensors,
      generation_config.json, preprocessor_config.json), like openai/whisper-large-v3;
    - "af3": an Audio Flamingo 3 folder like nvidia/audio-flamingo-3-hf: config.json (model_type
      audioflamingo3 with audio_config), sharded safetensors with an index, the encoder under
      `audio_tower.` (transformers' Qwen2AudioEncoder, AF-Whisper's architecture) in one shard
      and small stand-ins for the projector and the LLM in the other (only their place matters).
    """
    if format not in WHISPER_FORMATS:
        raise ValueError(f"unknown Whisper checkpoint format {format!r}; expected one of {list(WHISPER_FORMATS)}")
    unknown = set(dims_overrides) - set(WHISPER_LARGE_V3)
    if unknown:
        raise ValueError(f"unknown Whisper dims {sorted(unknown)}; expected some of {sorted(WHISPER_LARGE_V3)}")
    dims = {**WHISPER_LARGE_V3, **dims_overrides}
    torch.manual_seed(seed)
    if format == "openai":
        from whisper.model import ModelDimensions, Whisper

        model = Whisper(ModelDimensions(**dims))
        ckpt = {"dims": dims, "model_state_dict": {k: v.half() for k, v in model.state_dict().items()}}
        atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
        return Path(path)
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=dims["n_mels"])
    encoder = dict(
        num_mel_bins=dims["n_mels"], d_model=dims["n_audio_state"], encoder_layers=dims["n_audio_layer"],
        encoder_attention_heads=dims["n_audio_head"], encoder_ffn_dim=4 * dims["n_audio_state"],
        max_source_positions=dims["n_audio_ctx"],
    )
    if format == "transformers":
        from transformers import WhisperConfig, WhisperForConditionalGeneration

        if dims["n_text_state"] != dims["n_audio_state"]:
            raise ValueError("transformers' Whisper has one d_model: n_text_state must equal n_audio_state")
        config = WhisperConfig(
            vocab_size=dims["n_vocab"], decoder_layers=dims["n_text_layer"], decoder_attention_heads=dims["n_text_head"],
            decoder_ffn_dim=4 * dims["n_text_state"], max_target_positions=dims["n_text_ctx"], **encoder,
        )
        model = WhisperForConditionalGeneration(config)

        def write_transformers(tmp: Path) -> None:
            model.save_pretrained(str(tmp))
            extractor.save_pretrained(str(tmp))

        return _write_folder(path, write_transformers)
    return _write_folder(path, lambda tmp: _write_af3(tmp, encoder, extractor))


def _write_af3(folder: Path, encoder_fields: dict, extractor: object) -> None:
    from safetensors.torch import save_file
    from transformers import Qwen2AudioEncoder, Qwen2AudioEncoderConfig

    audio = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**encoder_fields))
    dim, text_dim = encoder_fields["d_model"], 16
    shards = {
        "model-00001-of-00002.safetensors": {f"audio_tower.{k}": v.contiguous() for k, v in audio.state_dict().items()},
        "model-00002-of-00002.safetensors": {
            "multi_modal_projector.linear_1.weight": torch.randn(text_dim, dim) * 0.02,
            "multi_modal_projector.linear_1.bias": torch.zeros(text_dim),
            "multi_modal_projector.linear_2.weight": torch.randn(text_dim, text_dim) * 0.02,
            "multi_modal_projector.linear_2.bias": torch.zeros(text_dim),
            "language_model.model.embed_tokens.weight": torch.randn(32, text_dim) * 0.02,
        },
    }
    weight_map, total = {}, 0
    for name, tensors in shards.items():
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        total += sum(v.numel() * v.element_size() for v in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = {
        "architectures": ["AudioFlamingo3ForConditionalGeneration"],
        "model_type": "audioflamingo3",
        "audio_config": {  # the field names transformers 5's AudioFlamingo3EncoderConfig writes
            "model_type": "audioflamingo3_encoder", "activation_function": "gelu", "num_mel_bins": encoder_fields["num_mel_bins"],
            "hidden_size": dim, "num_hidden_layers": encoder_fields["encoder_layers"],
            "num_attention_heads": encoder_fields["encoder_attention_heads"], "intermediate_size": encoder_fields["encoder_ffn_dim"],
            "max_source_positions": encoder_fields["max_source_positions"],
        },
        "text_config": {"model_type": "qwen2", "hidden_size": text_dim, "vocab_size": 32},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    extractor.save_pretrained(str(folder))
