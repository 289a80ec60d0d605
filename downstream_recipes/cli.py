"""The `usad` command: the library's subcommands plus the recipes' (corpora, superb, hear run,
leaderboard, demo, xares). It lives here because this layer sees both; the library never imports it."""
from __future__ import annotations

import sys
from typing import Sequence

from usad_upstream.cli import LIBRARY_COMMANDS
from usad_upstream.cli import main as _main

RECIPE_COMMANDS: tuple[str, ...] = (
    "downstream_recipes.corpora.commands",
    "downstream_recipes.commands",
    "downstream_recipes.demo.commands",
    "downstream_recipes.xares.commands",
)


def main(argv: "Sequence[str] | None" = None) -> int:
    return _main(argv, (*LIBRARY_COMMANDS, *RECIPE_COMMANDS))


if __name__ == "__main__":
    sys.exit(main())
