"""Whisper-class encoders as teachers: the encoder of an openai-whisper checkpoint (a `.pt` dict
with `dims` and `model_state_dict`, run by the whisper package's AudioEncoder), of a transformers
folder (WhisperModel / WhisperForConditionalGeneration, run by transformers' WhisperEncoder), or
Audio Flamingo 3's AF-Whisper (variant "af_whisper", below).

Windows. The encoders take exactly 30 s: 3000 log-mel frames, 1500 output frames (50 Hz for
Large-v3). Each item is cut into 30-s windows without overlap and each window gets its package's
own features (openai: pad_or_trim + log_mel_spectrogram; transformers: WhisperFeatureExtractor,
which pads to 30 s), so a clip of at most 30 s gets exactly what the package gives it and a longer
one what the package gives each window. A window of r samples has m = ceil(r / 160) valid mel
frames (those centred inside the audio: the feature extractor's own mask) and (m - 1) // 2 + 1
valid output frames (transformers' `_get_feat_extract_output_lengths`); the rest, the features of
the padding, are cut off and the windows' valid frames are concatenated in time. The log-mel floor
(max - 8, i.e. 80 dB) is per window, as the packages do for one 30-s input (openai's long-form
transcribe takes it over the whole file: different only where a window is 80 dB below the loudest).

Padding. Every window is a full 30-s input whatever else is in the batch, and Whisper attends over
all of it without a mask, so a padded batch gives each item what it gets alone.

AF-Whisper. The same blocks and parameter names, but AF3 masks each window's padded frames in
attention and average-pools the last block's output by 2 before the final LayerNorm (25 Hz: what
its LLM reads). transformers 4.57 has no Audio Flamingo 3 class; AF3's released code builds its
encoder from a copy of transformers' Qwen2-Audio modelling file, so transformers' Qwen2AudioEncoder
runs it here, with the mask built as Qwen2-Audio (and AF3's sound tower) build it. Intermediate layers are pooled the same way, so every layer is at 25 Hz.
Weights are read from any transformers-style folder by key prefix (e.g. `audio_tower.` in
nvidia/audio-flamingo-3-hf), found automatically when only one encoder is in the files.

Layers. Layer k < L is block k's output and layer L the encoder's output (after its final norm),
as transformers' `hidden_states[1:]`. All L are returned (the Teacher interface; the trainer picks
the distilled ones, for stage 2 the last): the blocks run in sequence, so the last layer costs all
of them anyway, and each block's valid frames are copied out as it finishes, so the 1500-frame
outputs of all blocks are never held at once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from ..frontend import check_waveforms
from .base import Teacher, TeacherOutput, load_torch_file

SAMPLE_RATE = 16000
VARIANTS = ("whisper", "af_whisper")
AF_WHISPER_TYPES = ("qwen2_audio_encoder", "audioflamingo3_encoder")
OPENAI_PREFIX = "encoder."
HEAD_DIM = 64  # every released Whisper size (tiny 384/6 ... large 1280/20)
HOW_TO_GET = (
    "Whisper expects an openai-whisper checkpoint (.pt, e.g. large-v3.pt) or a transformers folder with config.json "
    "and model.safetensors (e.g. a snapshot of openai/whisper-large-v3, or of nvidia/audio-flamingo-3-hf for AF-Whisper)"
)


class WhisperTeacher(Teacher):
    """Windows, valid frames and per-layer capture; subclasses give the features and the forward."""

    def __init__(self, encoder: nn.Module, blocks: list[nn.Module], dim: int, window_samples: int, hop: int, pool: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.window_samples = window_samples
        self.hop = hop
        self.pool = pool
        self.frame_rate = SAMPLE_RATE / (hop * 2 * pool)  # conv2 has stride 2
        self.num_layers = len(blocks)
        self.dim = dim
        self._sink: Optional[Callable[[int, torch.Tensor], None]] = None
        for index, block in enumerate(blocks[:-1]):  # the last layer is the encoder's own output
            block.register_forward_hook(self._hook(index))
        self.freeze()

    def _hook(self, index: int) -> Callable:
        def capture(module: nn.Module, inputs: object, output: object) -> None:
            if self._sink is not None:
                self._sink(index, self.pooled(output[0] if isinstance(output, tuple) else output))

        return capture

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """A block's [W, T, D] output at the teacher's frame rate (AF-Whisper: its own avg pooler)."""
        return hidden

    def window_frames(self, samples: int) -> int:
        """Valid output frames of a window of `samples` samples (see the module docstring)."""
        mel = -(-samples // self.hop)
        return ((mel - 1) // 2 + 1) // self.pool

    def features(self, windows: list[torch.Tensor]) -> torch.Tensor:
        """1-D windows of at most 30 s -> log-mel [W, n_mels, 3000] on their device."""
        raise NotImplementedError

    def encode(self, mel: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """Log-mel [W, n_mels, 3000] (with each window's sample count) -> encoder output [W, T, D]."""
        raise NotImplementedError

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        lens = check_waveforms(wavs, wav_lens)
        plan: list[tuple[int, int, int, int, int]] = []  # item, first sample, samples, first frame, frames
        lengths = []
        for item, n in enumerate(lens.tolist()):
            offset = 0
            for start in range(0, n, self.window_samples):
                samples = min(self.window_samples, n - start)
                frames = self.window_frames(samples)
                if frames:  # a last window of a few samples may have none
                    plan.append((item, start, samples, offset, frames))
                    offset += frames
            lengths.append(offset)  # > 0: check_waveforms's 400-sample minimum gives every first window frames
        layers: list[Optional[torch.Tensor]] = [None] * self.num_layers

        def sink(index: int, hidden: torch.Tensor) -> None:
            if layers[index] is None:
                layers[index] = hidden.new_zeros(len(lengths), max(lengths), hidden.shape[-1])
            for window, (item, _, _, offset, frames) in enumerate(plan):
                layers[index][item, offset : offset + frames] = hidden[window, :frames]

        with torch.autocast(wavs.device.type, enabled=False):  # log-mel in fp32 whatever the trainer's autocast
            mel = self.features([wavs[item, start : start + samples] for item, start, samples, _, _ in plan])
        self._sink = sink
        try:
            final = self.encode(mel, torch.tensor([p[2] for p in plan], device=wavs.device))
        finally:
            self._sink = None
        sink(self.num_layers - 1, final)
        return TeacherOutput(layers=layers, lengths=torch.tensor(lengths, device=wavs.device), frame_rate=self.frame_rate)


class OpenAIWhisperTeacher(WhisperTeacher):
    """The whisper package's AudioEncoder and log-mel frontend."""

    def __init__(self, encoder: nn.Module, n_mels: int) -> None:
        from whisper import audio

        super().__init__(encoder, list(encoder.blocks), encoder.ln_post.normalized_shape[0], audio.N_SAMPLES, audio.HOP_LENGTH, 1)
        self.n_mels = n_mels

    def features(self, windows: list[torch.Tensor]) -> torch.Tensor:
        from whisper import audio

        # one call per window: log_mel_spectrogram's 80 dB floor is taken over its whole input
        return torch.stack([audio.log_mel_spectrogram(audio.pad_or_trim(w.float()), self.n_mels) for w in windows])

    def encode(self, mel: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        return self.encoder(mel)


class TransformersWhisperTeacher(WhisperTeacher):
    """transformers' WhisperEncoder (variant "whisper") or Qwen2AudioEncoder ("af_whisper"), with
    WhisperFeatureExtractor."""

    def __init__(self, encoder: nn.Module, feature_extractor: object, variant: str) -> None:
        pool = 2 if variant == "af_whisper" else 1
        super().__init__(encoder, list(encoder.layers), encoder.config.d_model, feature_extractor.n_samples,
                         feature_extractor.hop_length, pool)
        self.feature_extractor = feature_extractor
        self.variant = variant

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.pool == 1:
            return hidden
        return self.encoder.avg_pooler(hidden.transpose(1, 2)).transpose(1, 2)

    def features(self, windows: list[torch.Tensor]) -> torch.Tensor:
        device = windows[0].device
        out = self.feature_extractor(
            [w.float().cpu().numpy() for w in windows], sampling_rate=SAMPLE_RATE, return_tensors="pt", device=str(device)
        )
        return out.input_features.to(device)

    def encode(self, mel: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.variant == "af_whisper":  # as Qwen2AudioForConditionalGeneration (and AF3) build it
            conv_lens, _ = self.encoder._get_feat_extract_output_lengths(-(-samples // self.hop))
            frames = (mel.shape[-1] - 2) // 2 + 1
            padded = torch.arange(frames, device=mel.device)[None, :] >= conv_lens[:, None]
            autocast = torch.is_autocast_enabled(mel.device.type)
            dtype = torch.get_autocast_dtype(mel.device.type) if autocast else self.encoder.conv1.weight.dtype
            mask = torch.zeros(mel.shape[0], 1, frames, frames, dtype=dtype, device=mel.device)
            mask.masked_fill_(padded[:, None, None, :], float("-inf"))
        return self.encoder(mel, attention_mask=mask).last_hidden_state


def load_whisper(
    path: "str | os.PathLike[str]", variant: "str | None" = None, key_prefix: "str | None" = None, trust_pickle: bool = False
) -> WhisperTeacher:
    """A Whisper-class teacher from an openai-whisper `.pt` file or a transformers folder."""
    path = Path(path)
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown Whisper variant {variant!r}; expected one of {list(VARIANTS)}")
    if path.is_dir():
        return _from_transformers(path, variant, key_prefix)
    if path.is_file():
        if variant not in (None, "whisper"):
            raise ValueError(f"{path}: variant {variant!r} needs a transformers folder; openai-whisper checkpoints hold plain Whisper")
        return _from_openai(path, OPENAI_PREFIX if key_prefix is None else key_prefix, trust_pickle)
    raise ValueError(f"Whisper checkpoint not found: {path}; {HOW_TO_GET}")


def _strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], where: Path) -> nn.Module:
    """Load into a module built on the meta device (no random init of 600M parameters), in fp32 as
    both packages' own loaders run it."""
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).splitlines()[:3])
        raise ValueError(f"{where}: Whisper encoder weights do not match their shapes: {first}") from None
    return module.float().eval()


def _from_openai(path: Path, prefix: str, trust_pickle: bool) -> WhisperTeacher:
    from whisper import audio
    from whisper.model import AudioEncoder, ModelDimensions

    ckpt = load_torch_file(path, "Whisper", trust_pickle)
    if not isinstance(ckpt, Mapping) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(f"{path}: not an openai-whisper checkpoint (no 'dims' and 'model_state_dict'; found {found}); {HOW_TO_GET}")
    try:
        dims = ModelDimensions(**ckpt["dims"])
    except TypeError as exc:
        raise ValueError(f"{path}: its 'dims' are not whisper's ModelDimensions ({exc})") from None
    if dims.n_audio_ctx * 2 * audio.HOP_LENGTH != audio.N_SAMPLES:
        raise ValueError(f"{path}: n_audio_ctx is {dims.n_audio_ctx}; whisper's 30-s windows give {audio.N_FRAMES // 2} frames")
    if dims.n_mels not in (80, 128):
        raise ValueError(f"{path}: n_mels is {dims.n_mels}; whisper's log_mel_spectrogram has filters for 80 and 128 only")
    state = {k[len(prefix) :]: v for k, v in ckpt["model_state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path}: no weights under {prefix!r} in model_state_dict")
    with torch.device("meta"):
        encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
    return OpenAIWhisperTeacher(_strict_load(encoder, state, path), dims.n_mels)


def _weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (single file or a sharded index)."""
    from safetensors import safe_open

    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        with safe_open(str(single), framework="pt") as handle:
            return {key: single for key in handle.keys()}
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index}: not a safetensors index with a weight_map ({exc})") from None
        return {key: path / name for key, name in weight_map.items()}
    other = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    hint = f" (found {other}: convert them with save_pretrained(safe_serialization=True))" if other else ""
    raise ValueError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}; {HOW_TO_GET}")


def _find_prefix(names: Mapping[str, Path], path: Path) -> str:
    """The one key prefix under which a Whisper encoder's tensors sit ('model.encoder.',
    'encoder.', 'audio_tower.', '' ...)."""
    suffix = "conv1.weight"
    found = sorted(
        key[: -len(suffix)] for key in names
        if key.endswith(suffix) and f"{key[: -len(suffix)]}layers.0.fc1.weight" in names
    )
    if len(found) != 1:
        what = f"several ({found})" if found else "none (no '<prefix>conv1.weight' beside '<prefix>layers.0.fc1.weight')"
        raise ValueError(f"{path}: looking for one Whisper encoder in the weights, found {what}; choose one with key_prefix")
    return found[0]


def _from_transformers(path: Path, variant: "str | None", key_prefix: "str | None") -> WhisperTeacher:
    from safetensors import safe_open
    from transformers import Qwen2AudioEncoder, Qwen2AudioEncoderConfig, WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path}: no config.json; {HOW_TO_GET}")
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_file}: not valid JSON ({exc})") from None
    fields = raw.get("audio_config") if isinstance(raw.get("audio_config"), dict) else raw  # AF3 / Qwen2-Audio nest it
    model_type = fields.get("model_type")
    if variant is None:
        variant = "whisper" if model_type == "whisper" else "af_whisper" if model_type in AF_WHISPER_TYPES else None
        if variant is None:
            raise ValueError(
                f"{config_file}: model_type {model_type!r} is not a Whisper-class encoder this teacher knows "
                f"(whisper, {', '.join(AF_WHISPER_TYPES)}); if its weights are one, set variant to one of {list(VARIANTS)}"
            )
    names = _weight_files(path)
    prefix = _find_prefix(names, path) if key_prefix is None else key_prefix
    keys = [k for k in names if k.startswith(prefix)]
    if f"{prefix}conv1.weight" not in keys:
        raise ValueError(f"{path}: no Whisper encoder under key prefix {prefix!r} (no {prefix}conv1.weight)")
    state = {}
    for file in sorted({names[k] for k in keys}):
        with safe_open(str(file), framework="pt") as handle:
            state.update({k[len(prefix) :]: handle.get_tensor(k) for k in keys if names[k] == file})
    conv1, depth = state["conv1.weight"], 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    dim = conv1.shape[0]
    heads = fields.get("encoder_attention_heads", fields.get("num_attention_heads", dim // HEAD_DIM))
    shape = dict(
        num_mel_bins=conv1.shape[1], d_model=dim, encoder_layers=depth, encoder_attention_heads=heads,
        encoder_ffn_dim=state["layers.0.fc1.weight"].shape[0], max_source_positions=state["embed_positions.weight"].shape[0],
        activation_function=fields.get("activation_function", "gelu"),
    )
    encoder_class, config_class = (WhisperEncoder, WhisperConfig) if variant == "whisper" else (Qwen2AudioEncoder, Qwen2AudioEncoderConfig)
    with torch.device("meta"):
        encoder = encoder_class(config_class(**shape))
    encoder = _strict_load(encoder, state, path)
    extractor_file = path / "preprocessor_config.json"
    if extractor_file.is_file():
        extractor = WhisperFeatureExtractor.from_pretrained(str(path))
    else:
        extractor = WhisperFeatureExtractor(feature_size=shape["num_mel_bins"])
    if extractor.feature_size != shape["num_mel_bins"] or extractor.nb_max_frames != 2 * shape["max_source_positions"]:
        raise ValueError(
            f"{path}: the feature extractor gives {extractor.feature_size} mels x {extractor.nb_max_frames} frames; the encoder "
            f"takes {shape['num_mel_bins']} x {2 * shape['max_source_positions']}"
        )
    return TransformersWhisperTeacher(encoder, extractor, variant)
