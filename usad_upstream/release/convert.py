"""`usad convert SNAPSHOT -o student.safetensors`: a release as a native checkpoint, verified.

The release's keys are mapped to ours by an explicit rule table and the config flags our model
needs are read from its config.json (sizes, the half-step FFN residual, openspeech's position
term and score scale, the frame rate). Neither the table nor the flags are known to be right
for the real files (RELEASED.md: the modules file was not readable), so nothing is written
unless the release's own code and the converted model agree on every layer, within 1e-4 in
fp32, on the same audio (several lengths, one longer than the release's 30 s window).
"""
from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import torch

from ..model import UsadModel, build_model
from ..presets import UsadConfig
from .backend import ReleaseEncoder, load_release_module
from .resolve import ReleaseError, ResolvedCheckpoint, Snapshot, resolve_checkpoint

CHECK_SECONDS = (1.01, 7.3, 31.0)  # an odd fbank frame count, a few seconds, two 30 s windows
TOLERANCE = 1e-4  # max |release - converted| <= TOLERANCE * max(1, max |release|), every layer

_BLOCK = r"encoder\.layers\.(\d+)\.sequential"
# Release key (after `model.`) -> ours, each a full match. Our reading of the openspeech names.
KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"encoder\.conv_subsample\.sequential\.0\.(weight|bias)", r"subsampling.conv1.\1"),
    (r"encoder\.conv_subsample\.sequential\.2\.(weight|bias)", r"subsampling.conv2.\1"),
    (r"encoder\.input_projection\.0\.linear\.(weight|bias)", r"subsampling.proj.\1"),
    (r"encoder\.subsample_norm\.(weight|bias)", r"subsampling.norm.\1"),
    (r"encoder\.conv_pos\.layers\.(\d+)\.0\.(weight|bias)", r"pos_conv.convs.\1.\2"),
    (_BLOCK + r"\.0\.module\.layer_norm\.(weight|bias)", r"blocks.\1.attn_norm.\2"),
    (_BLOCK + r"\.0\.module\.attention\.query_proj\.linear\.(weight|bias)", r"blocks.\1.attn.q_proj.\2"),
    (_BLOCK + r"\.0\.module\.attention\.key_proj\.linear\.(weight|bias)", r"blocks.\1.attn.k_proj.\2"),
    (_BLOCK + r"\.0\.module\.attention\.value_proj\.linear\.(weight|bias)", r"blocks.\1.attn.v_proj.\2"),
    (_BLOCK + r"\.0\.module\.attention\.out_proj\.linear\.(weight|bias)", r"blocks.\1.attn.out_proj.\2"),
    (_BLOCK + r"\.0\.module\.attention\.pos_proj\.linear\.weight", r"blocks.\1.attn.pos_proj.weight"),
    (_BLOCK + r"\.0\.module\.attention\.u_bias", r"blocks.\1.attn.pos_bias_u"),
    (_BLOCK + r"\.0\.module\.attention\.v_bias", r"blocks.\1.attn.pos_bias_v"),
    (_BLOCK + r"\.1\.module\.sequential\.0\.(weight|bias)", r"blocks.\1.ffn_norm.\2"),
    (_BLOCK + r"\.1\.module\.sequential\.1\.linear\.(weight|bias)", r"blocks.\1.ffn.fc1.\2"),
    (_BLOCK + r"\.1\.module\.sequential\.4\.linear\.(weight|bias)", r"blocks.\1.ffn.fc2.\2"),
    (r"encoder\.layer_norm\.(weight|bias)", r"final_norm.\1"),
)
# config.json field -> the value our model can express (anything else: one line saying so)
REQUIRED = {"transformer_style": True, "use_framewise_subsample": True, "use_patchwise_subsample": False,
            "conv_pos": True, "subsample_normalization": True, "attention_type": "mhsa", "input_dim": 128}


class ConvertError(ReleaseError):
    """The release cannot be expressed by, or does not agree with, the native model."""


def release_config(snapshot: Snapshot) -> UsadConfig:
    """Our UsadConfig for the release's config.json."""
    cfg = snapshot.config
    where = snapshot.directory / "config.json"
    for name, expected in REQUIRED.items():
        if cfg.get(name, expected) != expected:
            raise ConvertError(f"{where}: {name} = {cfg[name]!r}; the native model expresses only {expected!r} "
                               "(run the release itself with --trust-remote-code instead)")
    extra: dict = {}
    if snapshot.subsample_rate != 2:
        if "frame_rate" not in {f.name for f in dataclasses.fields(UsadConfig)}:
            raise ConvertError(f"{where}: a {snapshot.frame_rate:g} Hz release; the native model has no frame_rate "
                               "option yet (run the release itself with --trust-remote-code instead)")
        extra["frame_rate"] = int(snapshot.frame_rate)
    depth = snapshot.size("conv_pos_depth")
    dim, layers = snapshot.size("encoder_dim"), snapshot.size("num_layers")
    return UsadConfig(
        dim=dim, layers=layers, heads=snapshot.size("num_attention_heads"),
        ffn_mult=snapshot.size("feed_forward_expansion_factor"), n_mels=snapshot.size("input_dim"),
        conv_channels=snapshot.size("conv_subsample_channels"), pos_conv_depth=depth,
        pos_conv_kernel=snapshot.size("conv_pos_width") // depth, pos_conv_groups=snapshot.size("conv_pos_groups"),
        max_fbank_frames=max_mel_length(snapshot),
        ffn_residual_scale=0.5 if cfg.get("half_step_residual", True) else 1.0,
        position_encoding="absolute_shift", attention_scale="model_dim",  # openspeech's "mhsa" (our reading)
        name=f"{cfg.get('model_type', 'usad')}-{dim}x{layers}", **extra,
    )


def max_mel_length(snapshot: Snapshot, default: int = 3000) -> int:
    """The release's encoder window in fbank frames: `MAX_MEL_LENGTH = N` in its code."""
    for path in snapshot.code_files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MAX_MEL_LENGTH" for t in node.targets)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)):
                return node.value.value
    return default


def read_release_weights(snapshot: Snapshot) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in snapshot.weights:
        if path.suffix != ".safetensors":
            raise ConvertError(f"{path}: only .safetensors weights are converted")
        state.update(load_file(str(path)))
    return state


def map_release_keys(state: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    """Strip `model.` and rename with KEY_RULES; any key no rule takes is named in the error."""
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("model."):] if key.startswith("model.") else None
        target = None
        for pattern, replacement in KEY_RULES if name is not None else ():
            if re.fullmatch(pattern, name):
                target = re.sub(pattern, replacement, name)
                break
        if target is None:
            raise ConvertError(f"{where}: tensor {key!r} has no place in the native model (usad_upstream/release/"
                               "convert.py KEY_RULES); run the release itself with --trust-remote-code instead")
        mapped[target] = value
    return mapped


def build_converted(snapshot: Snapshot, config: UsadConfig) -> UsadModel:
    """The native model of `config` with the release's weights (not yet verified)."""
    state = map_release_keys(read_release_weights(snapshot), snapshot.weights[0])
    with torch.device("meta"):
        model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ConvertError(f"{snapshot.weights[0]}: no release tensor for {missing[:3]} of the native model")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConvertError(f"{snapshot.weights[0]}: {key} has shape {tuple(value.shape)}, the config "
                               f"({config.name}) needs {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return model.eval()


def check_audio(seconds: float) -> torch.Tensor:
    """Deterministic test audio: noise plus a sweep, [1, N] at 16 kHz."""
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    noise = torch.randn(n, generator=torch.Generator().manual_seed(n))
    return (0.05 * noise + 0.2 * torch.sin(2 * torch.pi * (200 + 300 * t) * t)).unsqueeze(0)


def layer_outputs(out: dict) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) in the order they are computed: input embedding, then per block its FFN
    output (after attention) and its output, then the final x."""
    named = [("input embedding", out["embedding"])] if "embedding" in out else []
    for i, hidden in enumerate(out["hidden_states"], start=1):
        if "ffn" in out:
            named.append((f"block {i} FFN", out["ffn"][i - 1]))
        named.append((f"block {i} output", hidden))
    return named + [("final output x", out["x"])]


def verify(release: ReleaseEncoder, native: UsadModel, seconds: tuple[float, ...] = CHECK_SECONDS,
           tolerance: float = TOLERANCE) -> dict[str, float]:
    """Max |difference| per layer over `seconds`; at the first length where a layer is beyond
    tolerance, ConvertError naming the first such layer in computation order. Returns the
    per-layer maxima when every layer agrees on every length."""
    worst: dict[str, float] = {}  # layer name -> max |diff|, in depth order (dicts keep insertion order)
    failures: dict[str, str] = {}
    with torch.inference_mode():
        for s in seconds:
            wav = check_audio(s)
            ours = dict(layer_outputs(native(wav)))
            for name, theirs in layer_outputs(release(wav)):
                worst.setdefault(name, 0.0)
                mine = ours.get(name)
                if mine is None or mine.shape != theirs.shape:
                    got = "nothing" if mine is None else f"shape {tuple(mine.shape)}"
                    failures.setdefault(name, f"the release gives shape {tuple(theirs.shape)}, the converted model {got} on {s:g} s")
                    continue
                diff = float((mine.float() - theirs.float()).abs().max())
                worst[name] = max(worst[name], diff)
                limit = tolerance * max(1.0, float(theirs.abs().max()))
                if diff > limit:
                    failures.setdefault(name, f"max |diff| {diff:.2e} > {limit:.1e} on {s:g} s of audio")
            for name in worst:
                if name in failures:
                    raise ConvertError(f"the converted model differs from the release at the {name}: {failures[name]}; "
                                       "nothing written (the key map or a config flag does not express this release)")
    return worst


def convert(resolved: ResolvedCheckpoint, trust_remote_code: "bool | None" = None,
            seconds: tuple[float, ...] = CHECK_SECONDS) -> tuple[UsadModel, dict[str, str]]:
    """Converted, verified model plus the metadata that travels with it (source, licence, check)."""
    snapshot = resolved.snapshot
    if resolved.kind != "release" or snapshot is None:
        raise ConvertError(f"{resolved.source}: not an official release snapshot (it is a {resolved.kind} checkpoint); "
                           "nothing to convert")
    config = release_config(snapshot)  # what the native model cannot express is refused before any code runs
    release = ReleaseEncoder(load_release_module(snapshot, trust_remote_code, converting=True), snapshot)
    native = build_converted(snapshot, config)
    worst = verify(release, native, seconds)
    metadata = {
        "converted_from": resolved.hub_id or str(snapshot.directory.resolve()),
        "license": snapshot.licence, "license_source": snapshot.licence_source,
        "verified": json.dumps({"seconds": list(seconds), "tolerance": TOLERANCE,
                                "max_abs_diff": max(worst.values()), "layers": len(worst)}),
    }
    return native, metadata


def convert_to_file(spec: "str | Path", output: "str | Path", trust_remote_code: "bool | None" = None) -> tuple[Path, dict]:
    from ..checkpoint import save_checkpoint

    model, metadata = convert(resolve_checkpoint(spec), trust_remote_code)
    return save_checkpoint(model, output, extra=metadata), metadata
