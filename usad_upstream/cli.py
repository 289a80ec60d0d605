"""The library's subcommands of the `usad` command, and the machinery that assembles it.

Each feature module contributes its subcommands through `register(subparsers)`; imports of heavy
libraries stay inside the handlers so `usad --help` is instant. This module names library modules
only: the full `usad` command (with the recipes' corpora / superb / demo commands) is assembled in
downstream_recipes/cli.py, which sees both layers. `python -m usad_upstream.cli` is the library part.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

# Library modules that add subcommands (each defines `register(subparsers)`).
LIBRARY_COMMANDS: tuple[str, ...] = ("usad_upstream.bench", "usad_upstream.hear", "usad_upstream.distill.commands")


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
    from .release.info import describe

    print(describe(args.checkpoint, trust_remote_code=args.trust_remote_code))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .release.convert import convert_to_file

    path, metadata = convert_to_file(args.snapshot, args.output, trust_remote_code=args.trust_remote_code)
    print(f"wrote {path}: every layer matches the release's own code (max |diff| "
          f"{json.loads(metadata['verified'])['max_abs_diff']:.1e}); licence {metadata['license']}")
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from .presets import PRESETS

    p = sub.add_parser("init", help="write a randomly initialised student checkpoint")
    p.add_argument("--size", choices=sorted(PRESETS), default="base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.set_defaults(func=_init)

    p = sub.add_parser("info", help="what a checkpoint is: config, parameter count, licence (any checkpoint form)")
    p.add_argument("checkpoint", help="student .safetensors, release snapshot directory, hub id or export directory")
    p.add_argument("--trust-remote-code", action="store_true", help="also load a release through its own code")
    p.set_defaults(func=_info)

    p = sub.add_parser("convert", help="an official release as a native checkpoint, verified layer by layer")
    p.add_argument("snapshot", help="release snapshot directory or hub id (MIT-SLS/USAD-Base)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path (written only if verified)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow running the release's own code (needed: it is the reference the check compares with)")
    p.set_defaults(func=_convert)


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
