"""The library's subcommands of the `usad` command, and the machinery that assembles it.

Each feature module contributes its subcommands through `register(subparsers)`; imports of heavy
libraries stay inside the handlers so `usad --help` is instant. This module names library modules
only: the full `usad` command (with the recipes' corpora / superb / demo commands) is assembled in
downstream_recipes/cli.py, which sees both layers. `python -m usad_upstream.cli` is the library part.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Library modules that add subcommands (each defines `register(subparsers)`).
LIBRARY_COMMANDS: tuple[str, ...] = (
    "usad_upstream.bench", "usad_upstream.hear", "usad_upstream.distill.commands", "usad_upstream.upscale",
)


class UsageError(ValueError):
    """A problem with what the user asked for; printed as one line, exit status 2."""


def _init(args: argparse.Namespace) -> int:
    import torch

    from . import build_model, save_checkpoint

    torch.manual_seed(args.seed)
    model = build_model(args.size)
    path = save_checkpoint(model, args.output)
    print(f"wrote {path} ({args.size}, {model.num_parameters():,} parameters, seed {args.seed})")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from . import load_model

    model = load_model(args.checkpoint)
    print(json.dumps(model.config.to_dict(), indent=2))
    print(f"parameters: {model.num_parameters():,}")
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from .presets import PRESETS

    p = sub.add_parser("init", help="write a randomly initialised student checkpoint")
    p.add_argument("--size", choices=sorted(PRESETS), default="base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.set_defaults(func=_init)

    p = sub.add_parser("info", help="print a checkpoint's config and parameter count")
    p.add_argument("checkpoint")
    p.set_defaults(func=_info)


def subcommands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str) -> "argparse._SubParsersAction[argparse.ArgumentParser]":
    """The subcommand group of command `name` (e.g. `hear`), so a later module can add to it."""
    parser = sub.choices[name]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError(f"`usad {name}` has no subcommands to add to")


def build_parser(modules: Sequence[str] = LIBRARY_COMMANDS) -> argparse.ArgumentParser:
    """The `usad` parser with this module's commands and those of `modules`, in order."""
    parser = argparse.ArgumentParser(prog="usad", description="USAD toolkit: models, distillation, benchmarks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: "Sequence[str] | None" = None, modules: Sequence[str] = LIBRARY_COMMANDS) -> int:
    args = build_parser(modules).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"usad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"usad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
