"""`usad xares run -k CKPT --tasks CORPORA/xares [--runs-dir runs]`: thin wrapper over runner.run_xares."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..taskdirs import model_options


def _options(args: argparse.Namespace) -> dict:
    options = model_options(args.model_options)
    for key in ("layers", "pooling", "target_layer"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    return options


def _run(args: argparse.Namespace) -> int:
    from .runner import XaresRun, run_xares

    run = XaresRun(checkpoint=args.checkpoint, tasks_dir=Path(args.tasks), runs_dir=Path(args.runs_dir), name=args.name,
                   tasks=tuple(args.task or ()), options=_options(args), trust_remote_code=args.trust_remote_code,
                   verbose=args.verbose)
    run_dir = run_xares(run)
    print(f"X-ARES done: {run_dir}")
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser("xares", help="X-ARES tasks through xares's own runner")
    commands = parser.add_subparsers(dest="xares_command", required=True, metavar="XARES_COMMAND")
    p = commands.add_parser("run", help="encode, train the MLP probe and score kNN for every task (finished tasks are skipped)")
    p.add_argument("--checkpoint", "-k", required=True,
                   help="a USAD .safetensors student, a release snapshot directory or a hub id such as MIT-SLS/USAD-Base")
    p.add_argument("--tasks", required=True, help="folder of local X-ARES tasks (`usad corpora build` writes CORPORA/xares) "
                                                  "or one task folder")
    p.add_argument("--task", action="append", help="only this task folder (repeatable)")
    p.add_argument("--runs-dir", default="runs", help="root of run directories (default: runs)")
    p.add_argument("--name", help="run name (default: usad-<checkpoint stem>)")
    p.add_argument("--layers", help="encoder layers as hear_api takes them: all (default), last, or 1-based '3,6,9,12'")
    p.add_argument("--pooling", choices=("mean", "concat"), help="how the layers combine (default: mean)")
    p.add_argument("--target-layer", type=int, help="USAD 2.0 releases: stop the encoder after this block")
    p.add_argument("--model-options", default="{}", help="more hear_api.load_model options as JSON")
    p.add_argument("--trust-remote-code", action="store_true", help="a release snapshot: allow running its own code")
    p.add_argument("--verbose", action="store_true", help="show xares's output, not only in the run's logs")
    p.set_defaults(func=_run)
