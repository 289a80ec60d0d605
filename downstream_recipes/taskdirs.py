"""Task folders of a benchmark's tasks directory (HEAR's task_metadata.json, our X-ARES task.json)."""
from __future__ import annotations

import json
from pathlib import Path


def select_task_dirs(tasks_dir: "str | Path", marker: str, only: "tuple[str, ...]" = (), flag: str = "--tasks-dir",
                     what: str = "task", itself: bool = False) -> list[Path]:
    """The subfolders of `tasks_dir` holding `marker` (with `itself`, `tasks_dir` when it holds
    it), optionally only the named ones; one-line errors naming the folder and what it has."""
    tasks_dir = Path(tasks_dir)
    if not tasks_dir.is_dir():
        raise ValueError(f"{flag} {tasks_dir}: not a directory")
    found = [tasks_dir] if itself and (tasks_dir / marker).is_file() else sorted(p for p in tasks_dir.iterdir() if (p / marker).is_file())
    if only:
        names = {p.name for p in found}
        unknown = [t for t in only if t not in names]
        if unknown:
            raise ValueError(f"tasks {unknown} not in {tasks_dir} (has: {', '.join(sorted(names)) or 'none'})")
        found = [p for p in found if p.name in only]
    if not found:
        raise ValueError(f"{tasks_dir}: no {what} folders (subfolders with {marker})")
    return found


def model_options(text: str) -> dict:
    """--model-options: a JSON object of load_model keyword arguments."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-options is not valid JSON ({exc})") from None
    if not isinstance(options, dict):
        raise ValueError("--model-options must be a JSON object")
    return options
