"""Named model configurations (plain data that travels with every checkpoint)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class UsadConfig:
    """Every field needed to rebuild a USAD student encoder; serialised into checkpoints."""

    dim: int = 768
    layers: int = 12
    heads: int = 12
    ffn_mult: int = 4
    dropout: float = 0.1
    n_mels: int = 128
    conv_channels: int = 64
    pos_conv_depth: int = 5
    pos_conv_kernel: int = 19
    pos_conv_groups: int = 16
    max_fbank_frames: int = 3000
    # Variants that express the official releases' code (usad convert reads them from its config.json);
    # the defaults are this toolkit's own model.
    ffn_residual_scale: float = 1.0  # 0.5: the release's half_step_residual
    position_encoding: str = "relative"  # or "absolute_shift" (see attention.POSITION_ENCODINGS)
    attention_scale: str = "head_dim"  # scores / sqrt(head_dim), or "model_dim": / sqrt(dim)
    name: str = "custom"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"UsadConfig: dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.dim % self.pos_conv_groups:
            raise ValueError(
                f"UsadConfig: dim ({self.dim}) must be divisible by pos_conv_groups ({self.pos_conv_groups})"
            )
        if self.pos_conv_kernel % 2 == 0:
            raise ValueError(f"UsadConfig: pos_conv_kernel must be odd, got {self.pos_conv_kernel}")
        if self.max_fbank_frames < 2 or self.max_fbank_frames % 2:
            raise ValueError(f"UsadConfig: max_fbank_frames must be even and >= 2, got {self.max_fbank_frames}")
        for field_name, allowed in (("position_encoding", ("relative", "absolute_shift")),
                                    ("attention_scale", ("head_dim", "model_dim"))):
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"UsadConfig: {field_name} must be one of {list(allowed)}, got {getattr(self, field_name)!r}")
        if not self.ffn_residual_scale > 0:
            raise ValueError(f"UsadConfig: ffn_residual_scale must be > 0, got {self.ffn_residual_scale}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UsadConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"UsadConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**dict(data))


PRESETS: dict[str, UsadConfig] = {
    "tiny": UsadConfig(dim=192, layers=4, heads=4, name="tiny"),
    "small": UsadConfig(dim=384, layers=12, heads=6, name="small"),
    "base": UsadConfig(dim=768, layers=12, heads=12, name="base"),
    "large": UsadConfig(dim=1024, layers=24, heads=16, name="large"),
}


def resolve_config(size_or_config: "str | UsadConfig | Mapping[str, Any]", **overrides: Any) -> UsadConfig:
    """Turn a preset name, a config or a plain dict (plus field overrides) into a UsadConfig."""
    if isinstance(size_or_config, UsadConfig):
        config = size_or_config
    elif isinstance(size_or_config, str):
        if size_or_config not in PRESETS:
            raise ValueError(f"unknown USAD size {size_or_config!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[size_or_config]
    elif isinstance(size_or_config, Mapping):
        config = UsadConfig.from_dict(size_or_config)
    else:
        raise TypeError(f"expected a preset name, UsadConfig or dict, got {type(size_or_config).__name__}")
    if overrides:
        known = {f.name for f in dataclasses.fields(UsadConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown config override(s) {unknown}; known fields are {sorted(known)}")
        config = dataclasses.replace(config, **overrides)
    return config
