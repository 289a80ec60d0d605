"""The `usad` command. Subcommands are thin: they parse arguments and call library functions.

Each feature module contributes its subcommands through `register(subparsers)`; imports of heavy
libraries stay inside the handlers so `usad --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Modules that add subcommands (each defines `register(subparsers)`).
COMMAND_MODULES: list[str] = ["usad_upstream.bench", "usad_upstream.hear", "usad_upstream.distill.commands", "downstream_recipes.corpora.commands", "downstream_recipes.commands", "downstream_recipes.demo.commands"]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usad", description="USAD toolkit: models, distillation, benchmarks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: "Sequence[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
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
