"""`usad hear ...`: hear-eval-kit's own validator and runners, after the compatibility patches.

    usad hear validate --model CKPT [--module hear_api] [--device cpu]
    usad hear embed   <args of python -m heareval.embeddings.runner>   e.g. hear_api --model CKPT --tasks-dir tasks
    usad hear predict <args of python -m heareval.predictions.runner>  e.g. embeddings/hear_api/TASK --grid faster
    usad hear run --module hear_api --model CKPT --tasks-dir DIR   (added by downstream_recipes: every task, resumable)

`embed` and `predict` pass every argument through unchanged to heareval's click commands, so
their options and defaults are heareval's (`usad hear embed --help` prints heareval's help).
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

# Arguments after `embed` / `predict` belong to heareval: a prefix no user types keeps argparse
# from reading heareval's options (--model, --help, ...) as ours.
_PASS_THROUGH_PREFIX = "\x00"


def validate(module: str, model: str, device: "str | None" = None) -> None:
    """Run hear-validator's own ValidateModel on `module` with checkpoint `model`."""
    from .compat import patch_heareval

    patch_heareval(lightning=False)
    from hearvalidator.validate import ModelError, ValidateModel

    try:
        ValidateModel(module, model, device=device)()
    except ModelError as exc:  # a BaseException in hearvalidator; turn it into our one-line error
        raise ValueError(f"hear-validator rejected {module}: {exc}") from None
    print("Looks good!")


def _run_click(command: object, args: Sequence[str], prog_name: str) -> int:
    import click

    try:
        result = command.main(args=list(args), prog_name=prog_name, standalone_mode=False)  # type: ignore[attr-defined]
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 130
    return result if isinstance(result, int) else 0


def run_embeddings_runner(args: Sequence[str]) -> int:
    """heareval.embeddings.runner with `args` (module, --model, --tasks-dir, --task, ...)."""
    from .compat import patch_heareval

    patch_heareval(lightning=False)
    from heareval.embeddings.runner import runner

    return _run_click(runner, args, "usad hear embed")


def run_predictions_runner(args: Sequence[str]) -> int:
    """heareval.predictions.runner with `args` (task dirs, --grid, --gpus, ...).

    The runner re-reads the Lightning checkpoints it has just written, which pickle its
    hyperparameters (torch classes); torch >= 2.6 refuses those by default, so this process
    loads them in full (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1), as torch < 2.6 did.
    """
    from .compat import patch_heareval

    patch_heareval()
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    from heareval.predictions.runner import runner

    return _run_click(runner, args, "usad hear predict")


def _validate(args: argparse.Namespace) -> int:
    validate(args.module, args.model, args.device)
    return 0


def _embed(args: argparse.Namespace) -> int:
    return run_embeddings_runner(args.heareval_args)


def _predict(args: argparse.Namespace) -> int:
    return run_predictions_runner(args.heareval_args)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    hear = sub.add_parser("hear", help="HEAR: hear-validator and heareval's embeddings/predictions runners")
    commands = hear.add_subparsers(dest="hear_command", required=True, metavar="HEAR_COMMAND")

    p = commands.add_parser("validate", help="run hear-validator on the HEAR module with a checkpoint")
    p.add_argument("--model", "-m", required=True, help="USAD checkpoint (.safetensors)")
    p.add_argument("--module", default="hear_api", help="HEAR API module to validate (default: hear_api)")
    p.add_argument("--device", "-d", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=_validate)

    for name, func, tool in (
        ("embed", _embed, "heareval.embeddings.runner"),
        ("predict", _predict, "heareval.predictions.runner"),
    ):
        p = commands.add_parser(
            name,
            help=f"run {tool} (same arguments as `python -m {tool}`)",
            prefix_chars=_PASS_THROUGH_PREFIX,
            add_help=False,
        )
        p.add_argument("heareval_args", nargs=argparse.REMAINDER, help=f"arguments for {tool}")
        p.set_defaults(func=func)
