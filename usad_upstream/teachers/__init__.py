"""Teachers: frozen models that give per-layer distillation targets, built from plain config data.

    build_teacher({"kind": "wavlm", "path": "WavLM-Base+.pt", "target": "ffn"})
    build_teacher({"kind": "atst_frame", "path": "atstframe_base.ckpt"})
    build_teacher({"kind": "s3prl", "name": "hubert", "ckpt": None})
    build_teacher({"kind": "usad", "path": "student.safetensors", "target": "hidden_states"})
    build_teacher({"kind": "usad", "path": "MIT-SLS/USAD-Base", "trust_remote_code": True})
    build_teacher({"kind": "muq", "path": "MuQ-large-msd-iter/"})
    build_teacher({"kind": "whisper", "path": "large-v3.pt"})                     # or a transformers folder
    build_teacher({"kind": "whisper", "path": "audio-flamingo-3-hf/", "variant": "af_whisper"})
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from .base import TARGETS, Teacher, TeacherOutput

__all__ = ["TARGETS", "KINDS", "Teacher", "TeacherOutput", "build_teacher"]


def _path(spec: Mapping[str, Any], kind: str) -> str:
    path = spec.get("path")
    if not path:
        raise ValueError(f"teacher kind {kind!r} needs 'path' (the checkpoint file)")
    if not Path(path).is_file():
        raise ValueError(f"teacher {kind!r}: checkpoint not found: {path}")
    return str(path)


def _wavlm(spec: Mapping[str, Any]) -> Teacher:
    from .wavlm import WavLMTeacher, load_wavlm

    model = load_wavlm(_path(spec, "wavlm"), trust_pickle=bool(spec.get("trust_pickle", False)))
    return WavLMTeacher(model, target=spec.get("target", "ffn"))


def _atst_frame(spec: Mapping[str, Any]) -> Teacher:
    from .atst import CHUNK_FRAMES, ATSTFrameTeacher, load_atst_frame

    encoder = load_atst_frame(_path(spec, "atst_frame"), trust_pickle=bool(spec.get("trust_pickle", False)))
    return ATSTFrameTeacher(encoder, target=spec.get("target", "ffn"), chunk_frames=int(spec.get("chunk_frames", CHUNK_FRAMES)))


def _s3prl(spec: Mapping[str, Any]) -> Teacher:
    from .s3prl_upstream import S3PRLTeacher, build_s3prl_upstream

    if spec.get("target", "hidden_states") != "hidden_states":
        raise ValueError(f"s3prl teachers give hidden states only; got target {spec['target']!r}")
    if not spec.get("name"):
        raise ValueError("teacher kind 's3prl' needs 'name' (an s3prl.hub entry, e.g. 'wavlm_base_plus' or 'fbank')")
    upstream = build_s3prl_upstream(spec["name"], ckpt=spec.get("ckpt"), extra_conf=spec.get("extra_conf"))
    return S3PRLTeacher(upstream, include_input_layer=bool(spec.get("include_input_layer", False)),
                        batched=bool(spec.get("batched", False)))


def _usad(spec: Mapping[str, Any]) -> Teacher:
    """Any checkpoint form usad_upstream.release resolves: our .safetensors, a release snapshot or
    hub id (its own code: trust_remote_code), an export; target_layer stops after that block."""
    from ..release import load_encoder
    from .usad import UsadTeacher

    if not spec.get("path"):
        raise ValueError("teacher kind 'usad' needs 'path' (a .safetensors file, a release snapshot directory or a hub id)")
    encoder = load_encoder(str(spec["path"]), trust_remote_code=bool(spec.get("trust_remote_code", False)),
                           target_layer=spec.get("target_layer"))
    return UsadTeacher(encoder, target=spec.get("target", "ffn"))


def _muq(spec: Mapping[str, Any]) -> Teacher:
    from .muq import MuQTeacher, load_muq

    if not spec.get("path"):
        raise ValueError("teacher kind 'muq' needs 'path' (the MuQ checkpoint folder: config.json + model.safetensors)")
    return MuQTeacher(load_muq(spec["path"]), target=spec.get("target", "hidden_states"))


def _whisper(spec: Mapping[str, Any]) -> Teacher:
    from .whisper import load_whisper

    if spec.get("target", "hidden_states") != "hidden_states":
        raise ValueError(f"whisper teachers give hidden states only (each block's output); got target {spec['target']!r}")
    if not spec.get("path"):
        raise ValueError("teacher kind 'whisper' needs 'path' (an openai-whisper .pt file or a transformers folder)")
    return load_whisper(spec["path"], variant=spec.get("variant"), key_prefix=spec.get("key_prefix"),
                        trust_pickle=bool(spec.get("trust_pickle", False)))


# kind -> (builder, the spec fields it reads besides 'kind')
KINDS: dict[str, tuple[Callable[[Mapping[str, Any]], Teacher], set[str]]] = {
    "wavlm": (_wavlm, {"path", "target", "trust_pickle"}),
    "atst_frame": (_atst_frame, {"path", "target", "trust_pickle", "chunk_frames"}),
    "s3prl": (_s3prl, {"name", "ckpt", "target", "include_input_layer", "batched", "extra_conf"}),
    "usad": (_usad, {"path", "target", "trust_remote_code", "target_layer"}),
    "muq": (_muq, {"path", "target"}),
    "whisper": (_whisper, {"path", "target", "variant", "key_prefix", "trust_pickle"}),
}


def build_teacher(spec: Mapping[str, Any]) -> Teacher:
    """A frozen, eval-mode teacher from plain config data (e.g. one entry of a YAML list)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a teacher spec must be a mapping with 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown teacher kind {kind!r}; expected one of {sorted(KINDS)}")
    builder, fields = KINDS[kind]
    extra = set(spec) - fields - {"kind"}
    if extra:
        raise ValueError(f"teacher {kind!r}: unknown fields {sorted(extra)}; allowed: {sorted(fields)}")
    return builder(spec)
