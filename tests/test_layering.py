"""The library layer (usad_upstream/, hear_api/) never imports the layers built on it
(downstream_recipes/, results/), not even inside a function: arrows point one way."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("usad_upstream", "hear_api")
UPPER = ("downstream_recipes", "results")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def upward_imports(repo: Path) -> list[str]:
    return [
        f"{path.relative_to(repo)}:{line} imports {name}"
        for package in LIBRARY
        for path in sorted((repo / package).rglob("*.py"))
        for line, name in imported_modules(path)
        if name.split(".")[0] in UPPER
    ]


def test_library_never_imports_recipes_or_results() -> None:
    assert upward_imports(REPO) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    pkg = tmp_path / "usad_upstream"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    from downstream_recipes.commands import add_hear_run\n")
    assert upward_imports(tmp_path) == ["usad_upstream/x.py:2 imports downstream_recipes.commands"]


def test_library_cli_has_no_recipe_commands() -> None:
    from usad_upstream.cli import build_parser

    from downstream_recipes.cli import main  # noqa: F401  (the full command imports)

    library = build_parser()
    commands = set(next(a for a in library._actions if a.dest == "command").choices)
    assert {"init", "info", "distill", "export", "hear", "bench"} <= commands
    assert not commands & {"superb", "corpora", "demo", "leaderboard"}
