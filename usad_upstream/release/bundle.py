"""Our model's source, bundled into an exported snapshot: the definitions a root set of names
needs, module by module, with relative imports renamed (`.model` -> `.usad_model`).

The exported files are generated from usad_upstream's own modules at export time (never a
hand-kept copy), so any change to the model, attention, frontend or presets code reaches the
next export. Only what is reachable from the roots is kept: compat.py's s3prl/heareval patches
(and the packages they import) stay out of a snapshot that must run with torch, torchaudio and
transformers alone.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # usad_upstream/
PREFIX = "usad_"


def bundled_name(module: str) -> str:
    return f"{PREFIX}{module}"


class _Module:
    """One source module's top-level statements, by the names they define."""

    def __init__(self, name: str) -> None:
        self.name = name
        path = PACKAGE_DIR / f"{name}.py"
        if not path.is_file():
            raise ValueError(f"bundle: usad_upstream/{name}.py does not exist")
        self.lines = path.read_text(encoding="utf-8").splitlines()
        self.tree = ast.parse("\n".join(self.lines), filename=str(path))
        self.definitions: dict[str, ast.stmt] = {}
        self.imported: dict[str, tuple[str, str]] = {}  # local name -> (module, name) of a relative import
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.definitions[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            self.definitions[leaf.id] = node
            elif isinstance(node, ast.ImportFrom) and node.level:
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (_relative_target(node, name), alias.name)
            elif not isinstance(node, (ast.Import, ast.ImportFrom)) and node is not self.tree.body[0]:
                raise ValueError(f"bundle: usad_upstream/{name}.py line {node.lineno}: a top-level statement that "
                                 "defines nothing; the bundler cannot tell whether the snapshot needs it")

    def segment(self, node: ast.stmt) -> str:
        """The statement's source with its decorators and the comment lines right above it."""
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        while start > 0 and self.lines[start - 1].lstrip().startswith("#"):
            start -= 1
        return "\n".join(self.lines[start : node.end_lineno])


def _relative_target(node: ast.ImportFrom, importer: str) -> str:
    if node.level != 1 or not node.module or "." in node.module:
        raise ValueError(f"bundle: usad_upstream/{importer}.py line {node.lineno}: only `from .module import name` "
                         "imports can be bundled")
    return node.module


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.value.id for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
    }


def _lazy_imports(node: ast.AST, importer: str) -> list[tuple[str, str]]:
    """Relative imports inside functions: (module, name) pairs they need."""
    return [(_relative_target(n, importer), a.name) for n in ast.walk(node)
            if isinstance(n, ast.ImportFrom) and n.level for a in n.names]


def bundle(roots: dict[str, set[str]]) -> dict[str, str]:
    """{module: names} -> {file name: source} of every module the names need, transitively."""
    modules: dict[str, _Module] = {}
    needed: dict[str, set[str]] = {}
    todo = [(module, name) for module, names in roots.items() for name in sorted(names)]
    while todo:
        module, name = todo.pop()
        if module not in modules:
            modules[module] = _Module(module)
        source = modules[module]
        if name in needed.setdefault(module, set()):
            continue
        needed[module].add(name)
        if name in source.imported:
            todo.append(source.imported[name])
            continue
        node = source.definitions.get(name)
        if node is None:
            raise ValueError(f"bundle: usad_upstream/{module}.py defines no {name!r}")
        for used in _names_used(node):
            if used != name and (used in source.definitions or used in source.imported):
                todo.append((module, used))
        todo += _lazy_imports(node, module)
    return {f"{bundled_name(m)}.py": _render(modules[m], needed[m]) for m in sorted(needed)}


def _render(source: _Module, names: set[str]) -> str:
    parts = [f'# Generated by `usad export` from usad_upstream/{source.name}.py: the definitions this snapshot needs.']
    body = source.tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        parts.append(source.segment(body[0]))
    relative: dict[str, list[str]] = {}
    for local in sorted(names & set(source.imported)):
        module, original = source.imported[local]
        relative.setdefault(module, []).append(original if original == local else f"{original} as {local}")
    kept: list[str] = []
    seen: set[int] = set()
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
            kept.append(source.segment(node))
        elif any(source.definitions.get(n) is node for n in names) and id(node) not in seen:
            seen.add(id(node))
            kept.append(_rename_relative(source.segment(node)))
    imports = [k for k in kept if k.startswith(("import ", "from "))]
    definitions = [k for k in kept if not k.startswith(("import ", "from "))]
    imports += [f"from .{bundled_name(m)} import {', '.join(sorted(n))}" for m, n in sorted(relative.items())]
    return "\n\n".join(parts + ["\n".join(imports)] + definitions) + "\n"


def _rename_relative(text: str) -> str:
    return re.sub(r"(\bfrom\s+)\.(\w+)(\s+import\b)", lambda m: f"{m.group(1)}.{bundled_name(m.group(2))}{m.group(3)}", text)
