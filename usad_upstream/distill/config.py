"""Distillation configs: plain YAML presets (configs/*.yaml) + dotted `key=value` overrides.

`load_config("base", ["teachers.wavlm.path=/ckpt/WavLM-Base+.pt", "train.lr=5e-4"])` reads the
packaged preset (or any YAML path), deep-merges it over DEFAULTS, applies the overrides (values
parsed as YAML, so numbers, booleans, null and lists work) and validates the result.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .data import DOMAINS, DataConfig

CONFIG_DIR = Path(__file__).parent / "configs"


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads 5e-4 as a number: YAML 1.1 (PyYAML) wants a dot (5.0e-4) and would
    hand the optimizer the string '5e-4'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


DEFAULTS: dict[str, Any] = {
    "run_dir": "runs/distill",
    # size: a preset name from usad_upstream.presets; any other key overrides a UsadConfig field.
    "model": {"size": "base"},
    # name -> teacher spec passed to usad_upstream.teachers.build_teacher (kind, path, target, ...),
    # plus the trainer's own fields (TRAINER_FIELDS, stripped before build_teacher): `weight`
    # (relative weight of this teacher in the total loss; default 1), `domain` (speech, sound or
    # music: the domain this teacher is the expert of, for objective.domain_omega) and `layers`
    # (`last`, an index or a list of 1-based teacher layers to distil instead of the K-sparse mapping).
    "teachers": {},
    # domain_omega: null (off) or w > 0, USAD 2.0's domain-aware weighting (objective.py).
    "objective": {"num_layers": 4, "head_hidden": None, "domain_omega": None},
    "data": {},
    "train": {
        "lr": 1e-3,
        "warmup_steps": 8000,
        "max_steps": 400000,
        "batch_seconds": 800.0,  # seconds of audio per optimizer step, over all processes
        "grad_accum": 1,
        "betas": [0.9, 0.98],
        "eps": 1e-6,
        "weight_decay": 0.01,
        "clip_grad": 10.0,
        "seed": 0,
        "device": "auto",  # auto: cuda when available, else cpu
        "precision": "auto",  # auto: bf16 autocast on cuda, fp32 on cpu; or bf16 / fp32
        "log_every": 50,
        "ckpt_every": 5000,
        "keep_last": 3,
        "stop_after": None,  # end this process after that many total steps (checkpoints stay resumable)
        # a fresh run starts its student from this one (.safetensors, run checkpoint or run dir);
        # heads, optimizer and schedule start anew. USAD 2.0's stage 2 starts from stage 1.
        "init_from": None,
    },
    "cache": {"dir": None},  # a directory built by `usad distill-cache`: train from stored teacher targets
}

TRAINER_FIELDS = ("weight", "domain", "layers")

# Keys that may change between a run and its resumption without changing what is trained
# (grad_accum may change with the number of processes as long as their product stays the same).
RESUMABLE_CHANGES = {
    "train.stop_after", "train.log_every", "train.ckpt_every", "train.keep_last", "data.num_workers", "train.device",
    "train.grad_accum",
}


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(config: dict[str, Any], override: str) -> None:
    """Set one dotted `a.b.c=value` in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like key.subkey=value")
    key, _, raw = override.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {override!r}: empty key component")
    node = config
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and (parts[0] == "teachers" or parts[0] == "model"):
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"override {override!r}: {'.'.join(parts[: i + 1])} is not a section of the config")
        node = child
    try:
        node[parts[-1]] = _yaml(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"override {override!r}: value is not valid YAML ({exc})") from None


def validate(config: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first unknown or invalid field."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config: unknown top-level key(s) {unknown}; known keys are {sorted(DEFAULTS)}")
    for section in ("train", "objective", "cache"):
        bad = sorted(set(config[section]) - set(DEFAULTS[section]))
        if bad:
            raise ValueError(f"config: unknown key(s) {bad} in {section}; known keys are {sorted(DEFAULTS[section])}")
    DataConfig.from_dict(config["data"])
    if not isinstance(config["teachers"], dict) or not config["teachers"]:
        raise ValueError("config: `teachers` must name at least one teacher, e.g. teachers.wavlm.kind=wavlm teachers.wavlm.path=...")
    for name, spec in config["teachers"].items():
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ValueError(f"config: teachers.{name} must be a mapping with at least `kind` (and usually `path`)")
        if spec.get("domain") is not None and spec["domain"] not in DOMAINS:
            raise ValueError(f"config: teachers.{name}.domain must be one of {list(DOMAINS)} or null, got {spec['domain']!r}")
        weight = spec.get("weight", 1.0)
        if not _is_number(weight) or weight < 0:
            raise ValueError(f"config: teachers.{name}.weight must be a number >= 0, got {weight!r}")
        layers = spec.get("layers")
        items = layers if isinstance(layers, list) else [layers]
        if layers is not None and layers != "last" and not (items and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in items)):
            raise ValueError(f"config: teachers.{name}.layers must be null, `last`, a layer index >= 1 or a list of them, got {layers!r}")
    omega = config["objective"]["domain_omega"]
    if omega is not None:
        if not _is_number(omega) or omega <= 0:
            raise ValueError(f"config: objective.domain_omega must be null (off) or a number > 0 (the paper: 10), got {omega!r}")
        if not any(spec.get("domain") for spec in config["teachers"].values()):
            raise ValueError("config: objective.domain_omega is set but no teacher has a domain: add teachers.NAME.domain=speech|sound|music")
    train = config["train"]
    for key in ("max_steps", "grad_accum", "log_every", "ckpt_every", "keep_last"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ValueError(f"config: train.{key} must be an integer >= 1, got {train[key]!r}")
    if not isinstance(train["warmup_steps"], int) or not 0 <= train["warmup_steps"] < train["max_steps"]:
        raise ValueError(f"config: train.warmup_steps must be an integer in [0, max_steps), got {train['warmup_steps']!r}")
    for key, positive in (("lr", True), ("batch_seconds", True), ("eps", True), ("clip_grad", True), ("weight_decay", False)):
        value = train[key]
        if not _is_number(value) or value < 0 or (positive and value == 0):
            raise ValueError(f"config: train.{key} must be a number {'>' if positive else '>='} 0, got {value!r}")
    betas = train["betas"]
    if not (isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"config: train.betas must be two numbers in [0, 1), got {betas!r}")
    if not isinstance(train["seed"], int):
        raise ValueError(f"config: train.seed must be an integer, got {train['seed']!r}")
    if train["stop_after"] is not None and (not isinstance(train["stop_after"], int) or train["stop_after"] < 1):
        raise ValueError(f"config: train.stop_after must be null or an integer >= 1, got {train['stop_after']!r}")
    if train["precision"] not in ("auto", "bf16", "fp32"):
        raise ValueError(f"config: train.precision must be auto, bf16 or fp32, got {train['precision']!r}")
    if train["init_from"] is not None and (not isinstance(train["init_from"], str) or not train["init_from"]):
        raise ValueError(f"config: train.init_from must be null or a checkpoint path, got {train['init_from']!r}")
    if "size" not in config["model"]:
        from ..presets import PRESETS

        raise ValueError(f"config: model.size is required (one of {sorted(PRESETS)})")


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A packaged preset name (`tiny`, `small`, `base`, ...) or a YAML file, plus overrides."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"config {name_or_path!r} is neither a file nor a preset; presets: {presets}")
    try:
        loaded = _yaml(path.read_text()) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a readable YAML config ({exc})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    config = _merge(DEFAULTS, loaded)
    for override in overrides:
        apply_override(config, override)
    # `teachers.NAME=null` drops a teacher of the preset.
    config["teachers"] = {k: v for k, v in (config.get("teachers") or {}).items() if v is not None}
    validate(config)
    return config


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def resume_conflicts(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Settings that differ between a run's saved config and the one asked for now."""
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
