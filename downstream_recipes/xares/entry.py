"""`python -m downstream_recipes.xares.entry ARGS`: xares's own command line (`python -m xares.run
ARGS`: encoder module, task modules, --max-jobs, --from-stage, --to-stage), run unchanged after
usad_upstream.compat.patch_xares() (xares cannot be imported on this stack before it)."""
from __future__ import annotations

import runpy
import sys
from typing import Sequence


def main(argv: "Sequence[str] | None" = None) -> None:
    from usad_upstream.compat import patch_xares

    patch_xares()
    sys.argv = ["xares.run", *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module("xares.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
