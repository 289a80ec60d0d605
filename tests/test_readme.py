"""README.md runs top to bottom as written.

Every ```bash and ```python block runs, in order, in one temporary directory that looks like a
checkout (the repository's top-level entries linked in, so `downstream_recipes/...` paths work and
every file a block writes stays in the temporary directory), with this interpreter's bin folder
(the .venv's `usad`, `python`) first on PATH. Python blocks run in fresh interpreters, so each must
define what it uses; files carry over from block to block. A block is skipped only when the line
just before its fence is `<!-- readme-test: skip: REASON -->`: blocks added later run by default.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from downstream_recipes.corpora import sources

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RUN = {"bash": "bash", "sh": "bash", "python": "python"}
SKIP = re.compile(r"^<!-- readme-test: skip: (?P<reason>.*\S) -->$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: "str | None"  # the reason, for a skipped block


def readme_blocks(text: str) -> list[Block]:
    """Fenced blocks in order, with the skip reason of the marker right above each (if any)."""
    lines = text.splitlines()
    blocks, i, previous = [], 0, ""
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        start, indent, body = i, len(fence["indent"]), []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md:{start + 1}: code block never closed")
        marker = SKIP.match(previous)
        blocks.append(Block(start + 1, fence["lang"], "\n".join(body) + "\n", marker["reason"] if marker else None))
        previous, i = "", i + 1
    return blocks


def test_the_block_parser_and_the_skip_rule() -> None:
    text = ("intro\n\n<!-- readme-test: skip: slow -->\n```bash\nmake demo\n```\n\n1. step:\n   ```python\n"
            "   print(1)\n   ```\n```text\nnot code\n```\n<!-- readme-test: skip: -->\n```bash\necho\n```\n")
    blocks = readme_blocks(text)
    assert [(b.lang, b.code, b.skip) for b in blocks] == [
        ("bash", "make demo\n", "slow"), ("python", "print(1)\n", None), ("text", "not code\n", None),
        ("bash", "echo\n", None),  # a marker without a reason does not skip
    ]


def test_every_skip_says_why_and_most_blocks_run() -> None:
    text = README.read_text()
    blocks = [b for b in readme_blocks(text) if b.lang in RUN]
    markers = [line for line in text.splitlines() if line.lstrip().startswith("<!--") and "readme-test" in line]
    assert all(SKIP.match(m.strip()) for m in markers), markers  # a malformed marker would silently run its block
    assert len(markers) == sum(b.skip is not None for b in blocks)  # and each marker sits right above a block
    assert sum(b.skip is None for b in blocks) >= 10


def _checkout_like(tmp: Path) -> None:
    for entry in REPO.iterdir():
        if not entry.name.startswith("."):
            (tmp / entry.name).symlink_to(entry)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a block in its own process group, so a block that hangs is stopped with its children."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return -9, f"{output}\n(killed after {timeout:.0f} s)"
    return proc.returncode, output


@pytest.mark.timeout(1800)
def test_readme_runs_top_to_bottom(tmp_path: Path) -> None:
    if sources.missing_packages(sources.packages_for("test")) and os.geteuid() != 0:
        pytest.skip("the README builds the `test` corpora, which need Debian packages (or root to install them)")
    _checkout_like(tmp_path)
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", OMP_NUM_THREADS="1")
    env.pop("TQDM_DISABLE", None)  # as a user's shell has it (s3prl's runner counts steps on its tqdm bar)
    ran = 0
    for block in readme_blocks(README.read_text()):
        if block.lang not in RUN or block.skip is not None:
            continue
        script = tmp_path / f".readme_block_{block.line}.{'py' if block.lang == 'python' else 'sh'}"
        script.write_text(block.code)
        cmd = ["bash", "-e", "-o", "pipefail", str(script)] if RUN[block.lang] == "bash" else [sys.executable, str(script)]
        began = time.monotonic()
        returncode, output = _run(cmd, tmp_path, env, timeout=600)
        assert returncode == 0, (f"README.md:{block.line} ({block.lang} block) exit {returncode}\n"
                                 f"{block.code}\n--- output:\n{output[-4000:]}")
        print(f"README.md:{block.line} {block.lang}: {time.monotonic() - began:.1f} s")
        ran += 1
    assert ran >= 10
