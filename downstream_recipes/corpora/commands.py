"""`usad corpora build|check`: thin CLI over build.build_corpora and check.check_corpora."""
from __future__ import annotations

import argparse
import logging


def _build(args: argparse.Namespace) -> int:
    from .build import build_corpora

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    timings = build_corpora(args.out, size=args.size, seed=args.seed, stages=args.stage or None, install=not args.no_install)
    for stage, seconds in timings.items():
        print(f"{stage}: {'already built' if seconds == 0 and stage != 'apt' else f'{seconds:.1f} s'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import check_corpora

    for name, summary in check_corpora(args.dir, args.stage or None).items():
        print(f"{name}: OK ({summary})")
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from .build import STAGES
    from .common import SIZES

    parser = sub.add_parser("corpora", help="build or check the local benchmark corpora (SUPERB and HEAR formats)")
    inner = parser.add_subparsers(dest="corpora_command", required=True, metavar="ACTION")
    p = inner.add_parser("build", help="build the corpora (installs the Debian packages it needs when root)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", choices=list(SIZES), default="mini", help="test: for the test suite; mini: <= 5 min; small: <= 20 min (2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", action="append", choices=list(STAGES), help="build only this stage (repeatable)")
    p.add_argument("--no-install", action="store_true", help="never run apt-get; fail naming the missing packages")
    p.set_defaults(func=_build)
    p = inner.add_parser("check", help="load every built corpus with s3prl's and heareval's own loaders")
    p.add_argument("dir", help="folder given to `corpora build --out`")
    p.add_argument("--stage", action="append", choices=[*STAGES], help="check only this stage (repeatable; default: all built)")
    p.set_defaults(func=_check)
