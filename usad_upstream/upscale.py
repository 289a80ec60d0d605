"""Depth up-scaling: a deeper student whose blocks are copies of a trained student's blocks.

USAD 2.0 made XXLarge (48 blocks) from XLarge (32) by stacking XLarge's first 24 and last 24
blocks (RELEASED.md). `usad upscale CKPT --layers first:24,last:24 -o OUT` does that for any
student: everything outside the blocks (conv subsampling, positional convs, final norm) is copied
as is, block i of the new model is an exact copy of the listed source block, and the config
differs only in `layers` (and `name`). The copies are independent tensors: training the new model
does not tie repeated blocks.

Layer spec: comma-separated parts, each `first:N` (blocks 1..N), `last:N` (blocks L-N+1..L),
`A-B` (blocks A..B, 1-based, inclusive) or `K` (block K), concatenated in order.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import torch

from .model import UsadModel, build_model
from .presets import PRESETS, UsadConfig

_PART = re.compile(r"^(?:(first|last):(\d+)|(\d+)-(\d+)|(\d+))$")


class UpscaleError(ValueError):
    """A layer spec that cannot be applied to the source model."""


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """1-based source block for each block of the new model, from a layer spec (module docstring)."""
    blocks: list[int] = []
    parts = [p.strip() for p in str(spec).split(",")]
    if not spec or not all(parts):
        raise UpscaleError(f"--layers {spec!r}: expected comma-separated parts such as first:24,last:24")
    for part in parts:
        match = _PART.match(part)
        if match is None:
            raise UpscaleError(f"--layers {spec!r}: cannot read {part!r}; parts are first:N, last:N, A-B or K (1-based blocks)")
        side, count, lo, hi, single = match.groups()
        if side:
            n = int(count)
            if not 1 <= n <= num_layers:
                raise UpscaleError(f"--layers {spec!r}: {part} needs 1 <= N <= {num_layers} (the source has {num_layers} blocks)")
            blocks += list(range(1, n + 1)) if side == "first" else list(range(num_layers - n + 1, num_layers + 1))
        else:
            a, b = (int(lo), int(hi)) if lo else (int(single), int(single))
            if not 1 <= a <= b <= num_layers:
                raise UpscaleError(f"--layers {spec!r}: {part} must name blocks within 1..{num_layers} in increasing order")
            blocks += list(range(a, b + 1))
    return blocks


def _preset_name(config: UsadConfig) -> str:
    """The preset this config equals apart from its name, else 'custom'."""
    plain = {k: v for k, v in config.to_dict().items() if k != "name"}
    for name, preset in PRESETS.items():
        if {k: v for k, v in preset.to_dict().items() if k != "name"} == plain:
            return name
    return "custom"


def upscale(model: UsadModel, blocks: "list[int]") -> UsadModel:
    """A new model with len(blocks) blocks, block i a copy of source block blocks[i] (1-based)."""
    config = dataclasses.replace(model.config, layers=len(blocks))
    config = dataclasses.replace(config, name=_preset_name(config))
    source = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if not key.startswith("blocks."):
            state[key] = value.clone()
    for i, src in enumerate(blocks):
        prefix = f"blocks.{src - 1}."
        for key, value in source.items():
            if key.startswith(prefix):
                state[f"blocks.{i}.{key[len(prefix):]}"] = value.clone()
    with torch.device("meta"):
        deeper = build_model(config)
    deeper.load_state_dict(state, strict=True, assign=True)
    return deeper.eval()


def _upscale(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .distill.student import load_student

    if Path(args.output).resolve() == Path(args.checkpoint).resolve():
        raise UpscaleError(f"-o {args.output} is the source checkpoint; write the deeper model to another file")
    model = load_student(args.checkpoint)
    blocks = parse_layers(args.layers, model.config.layers)
    deeper = upscale(model, blocks)
    extra = {"upscaled_from": str(Path(args.checkpoint).resolve()), "upscale_layers": args.layers,
             "upscale_blocks": ",".join(map(str, blocks))}
    path = save_checkpoint(deeper, args.output, extra=extra)
    print(f"wrote {path}: {model.config.layers} -> {deeper.config.layers} blocks ({deeper.config.name}, "
          f"{deeper.num_parameters():,} parameters); source blocks {extra['upscale_blocks']}")
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "upscale",
        help="depth up-scaling: stack a student's blocks into a deeper student (USAD 2.0's XXLarge from XLarge)",
        description="Parts of --layers: first:N, last:N, A-B, K (1-based source blocks), in order; "
        "e.g. first:24,last:24 turns a 32-block XLarge into a 48-block XXLarge.",
    )
    p.add_argument("checkpoint", help="student .safetensors, a distillation run checkpoint, or a run directory")
    p.add_argument("--layers", required=True, help="source blocks of the new model, e.g. first:24,last:24")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.set_defaults(func=_upscale)
