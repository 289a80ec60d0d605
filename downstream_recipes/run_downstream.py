"""Drop-in for s3prl's run_downstream.py with USAD registered (`-u usad -k CKPT`).

Same arguments as s3prl's script; it applies `compat.patch_s3prl()`, registers the USAD hub
entries, then runs s3prl's own `run_downstream.main()` (shipped inside the s3prl package).
One convenience: without `--device`, it uses cpu when CUDA is unavailable (s3prl defaults to cuda).

    python downstream_recipes/run_downstream.py -m train -u usad -k student.safetensors \
        -d example -c downstream_recipes/superb/configs/example.yaml -p exp/example
    python downstream_recipes/run_downstream.py -m evaluate -e exp/example/states-2.ckpt
"""
from __future__ import annotations

import sys

PROG = "usad-run-downstream"


def _default_device(argv: list[str]) -> list[str]:
    """Append `--device cpu` when the user gave no device and this torch has no CUDA."""
    import torch

    if torch.cuda.is_available() or any(a == "--device" or a.startswith("--device=") for a in argv):
        return argv
    print(f"[{PROG}] - CUDA is not available: running with --device cpu", file=sys.stderr)
    return [*argv, "--device", "cpu"]


def main() -> None:
    """Entry point of `usad-run-downstream` and of `python downstream_recipes/run_downstream.py`."""
    from usad_upstream.compat import patch_s3prl

    patch_s3prl()
    from usad_upstream.upstream import UsadUpstreamError, register_s3prl_upstreams
    from usad_upstream.upstream.hubconf import check_upstream_name

    register_s3prl_upstreams()
    from s3prl import run_downstream

    sys.argv = [sys.argv[0], *_default_device(sys.argv[1:])]
    try:
        for flag, value in zip(sys.argv, sys.argv[1:]):
            if flag in ("-u", "--upstream"):
                check_upstream_name(value)  # a typo: one line, not s3prl's traceback
        run_downstream.main()
    except UsadUpstreamError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    # Run as a script, Python puts this folder first on sys.path, so its subfolders would shadow
    # top-level packages; put the repository root there instead (also works without installing).
    from pathlib import Path

    here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == here:
        sys.path[0] = str(here.parent)
    main()
