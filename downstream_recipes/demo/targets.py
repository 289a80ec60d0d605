"""The demo's claim, checked with its uncertainty and written into the leaderboard.

Targets (a miniature of the paper's Table III/IV claim):
1. speech tasks: the student keeps >= 90% of the speech teacher's score (error rates <= 1.1x);
2. audio tasks: the student keeps >= 90% of the audio teacher's score;
3. the student's average over all tasks beats each teacher's.
Averages use "higher is better" percent scores (100 - PER for PR).

Each number is the mean over the probe seeds; each comparison is a paired bootstrap over seeds x
test items (results.intervals; items grouped by voice where the corpus names it). A task's target
is MET when the whole 95% interval of student / teacher is on the rule's side, MISSED when the
whole interval is on the other side, INCONCLUSIVE otherwise; a domain is MET when every task is
MET and MISSED when any task is MISSED. A missing score is a gap: its target is not established.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from results.collect import collect
from results.intervals import (INCONCLUSIVE, MET, MISSED, IntervalError, Runs, all_of, mean_difference_interval,
                               paired_interval, safe_ratio, score_interval, verdict)
from results.tasks import SUPERB, SUPERB_TASKS, is_primary_metric
from results.uncertainty import runs_by_cell

from .machines import save_record

STUDENT, SPEECH, AUDIO = "usad_student", "speech_teacher", "audio_teacher"
SPEECH_HEAR_TASKS = ("keywords",)  # HEAR tasks of the speech domain; every other HEAR task is audio
KEEP, ERROR_RATE_LIMIT = 0.9, 1.1


def primary_metric(measured: pd.DataFrame) -> pd.DataFrame:
    """Rows of each SUPERB task's own metric (SF also logs slot-value CER beside its F1)."""
    keep = [is_primary_metric(b, t, m) for b, t, m in zip(measured["benchmark"], measured["task"], measured["metric"])]
    return measured[keep]


def lower_is_better(benchmark: str, task: str) -> bool:
    return benchmark == SUPERB and task in SUPERB_TASKS and not SUPERB_TASKS[task].higher_is_better


def newest_checkpoints(measured: pd.DataFrame) -> pd.DataFrame:
    """Rows of each model's newest checkpoint per task (a model name reused for a new checkpoint
    replaces the old one, as the leaderboard's newest run does)."""
    if measured.empty:
        return measured
    newest = measured.sort_values("date").groupby(["model", "benchmark", "task"])["checkpoint_hash"].last()
    keep = [newest.get((m, b, t)) == h for m, b, t, h in measured[["model", "benchmark", "task", "checkpoint_hash"]].itertuples(index=False)]
    return measured[keep]


def _cells(measured: pd.DataFrame, split: str) -> dict[tuple[str, str, str], tuple[Runs, str]]:
    """(model, benchmark, task) -> that model's seeds x items on `split`."""
    rows = newest_checkpoints(primary_metric(measured[measured["split"] == split])) if not measured.empty else measured
    return {(m, b, t): v for (m, _, b, t, _, _), v in runs_by_cell(rows).items()}


def _interval(iv: "object | None") -> "dict | None":
    return iv.as_dict() if iv is not None else None  # type: ignore[attr-defined]


def evaluate_targets(measured: pd.DataFrame, split: str = "test") -> dict:
    """Per-task paired ratios with intervals, per-model averages and the three targets."""
    cells = _cells(measured, split)
    tasks = sorted({(b, t) for _, b, t in cells}, key=lambda bt: (bt[0] != SUPERB, bt))
    rows, checks = [], {"speech": [], "audio": []}
    for benchmark, task in tasks:
        domain = "speech" if benchmark == SUPERB or task in SPEECH_HEAR_TASKS else "audio"
        teacher = SPEECH if domain == "speech" else AUDIO
        lower = lower_is_better(benchmark, task)
        s, t = cells.get((STUDENT, benchmark, task)), cells.get((teacher, benchmark, task))
        row = {"benchmark": benchmark, "task": task, "domain": domain, "teacher": teacher,
               "rule": f"student <= {ERROR_RATE_LIMIT} x teacher (error rate)" if lower else f"student >= {KEEP} x teacher",
               "teacher_score": None, "student_score": None, "ratio": None, "seeds": [], "resampled": None,
               "verdict": None, "note": ""}
        if s is None or t is None:
            row["note"] = "gap: " + " and ".join(m for m, c in ((STUDENT, s), (teacher, t)) if c is None) + " not measured"
        else:
            try:
                ratio = paired_interval(s[0], t[0], safe_ratio(lower))
                row.update(teacher_score=_interval(score_interval(t[0])), student_score=_interval(score_interval(s[0])),
                           ratio=_interval(ratio), seeds=list(ratio.seeds),
                           resampled=s[1] if s[1] == t[1] else "seeds only",
                           verdict=verdict(ratio, ERROR_RATE_LIMIT if lower else KEEP, at_least=not lower))
            except IntervalError as exc:
                row["note"] = f"cannot pair student and teacher: {exc}"
        checks[domain].append(row["verdict"])
        rows.append(row)

    averages, per_model = {}, {}
    for model in sorted({m for m, _, _ in cells}):
        have = [(b, t) for b, t in tasks if (model, b, t) in cells]
        if len(have) == len(tasks):
            per_model[model] = [(cells[(model, b, t)][0], lower_is_better(b, t)) for b, t in have]
            averages[model] = sum((100 - r.score) if low else r.score for r, low in per_model[model]) / len(have)
        else:
            averages[model] = math.nan
    beats = {}
    for teacher in (SPEECH, AUDIO):
        if STUDENT in per_model and teacher in per_model:
            try:
                diff = mean_difference_interval([(a, b, low) for (a, low), (b, _) in zip(per_model[STUDENT], per_model[teacher])])
                beats[teacher] = {"difference": diff.as_dict(), "verdict": verdict(diff, 0.0, at_least=True)}
            except IntervalError as exc:
                beats[teacher] = {"difference": None, "verdict": None, "note": str(exc)}
        else:
            beats[teacher] = {"difference": None, "verdict": None, "note": "gap: a model lacks a task"}
    return {
        "split": split, "tasks": rows, "averages": averages, "average_difference": beats,
        "targets": {
            "speech: student >= 90% of the speech teacher on every speech task": all_of(checks["speech"]),
            "audio: student >= 90% of the audio teacher on every audio task": all_of(checks["audio"]),
            "average: student above both teachers over all tasks": all_of([b["verdict"] for b in beats.values()]),
        },
    }


def _plain(value: object) -> object:
    """JSON-safe copy: NaN -> null, numpy scalars -> float."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, int):
        return value
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else number


def _span(iv: "dict | None", digits: int = 2) -> str:
    if iv is None:
        return "gap"
    return f"{iv['value']:.{digits}f} [{iv['low']:.{digits}f}, {iv['high']:.{digits}f}]"


def _word(v: "str | None") -> str:
    return v if v in (MET, MISSED, INCONCLUSIVE) else "NOT ESTABLISHED (gap)"


def markdown(result: dict, budget: dict) -> str:
    lines = ["## Targets (the paper's claim in miniature)", ""]
    if budget.get("mode") == "QUICK":
        lines += ["QUICK run: smoke-test budgets (tens of training steps), so scores sit near chance and the "
                  "verdicts below say nothing about the method; run `make demo` for the real comparison.", ""]
    lines += [f"Split: {result['split']}. Numbers are means over probe seeds with 95% intervals [low, high] "
              "(paired percentile bootstrap over seeds x test items, items of one voice drawn together where the "
              "corpus names voices). MET: the whole interval of student / teacher clears the rule; MISSED: none "
              "of it does; INCONCLUSIVE: it straddles the rule.", ""]
    for name, v in result["targets"].items():
        lines.append(f"- **{_word(v)}** — {name}")
    lines += ["", "| benchmark | task | domain | teacher | teacher score | student score | student / teacher | rule | seeds | resampled | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["tasks"]:
        lines.append(f"| {r['benchmark']} | {r['task']} | {r['domain']} | {r['teacher']} | {_span(r['teacher_score'])} | "
                     f"{_span(r['student_score'])} | {_span(r['ratio'], 3)} | {r['rule']} | "
                     f"{' '.join(map(str, r['seeds']))} | {r['resampled'] or ''} | {_word(r['verdict'])}"
                     f"{' (' + r['note'] + ')' if r['note'] else ''} |")
    lines += ["", "Average over all tasks (percent, higher is better; PR counted as 100 - PER):", ""]
    lines += [f"- {m}: {'gap' if math.isnan(v) else f'{v:.2f}'}" for m, v in sorted(result["averages"].items())]
    for teacher, b in result["average_difference"].items():
        lines.append(f"- student - {teacher}: {_span(b['difference'])} points: {_word(b['verdict'])}")
    lines += ["", "Settings of this run (fixed in downstream_recipes/demo/pipeline.py; nothing was tuned on a test split):",
              "", "```", json.dumps(budget, indent=1), "```", ""]
    return "\n".join(lines)


def targets_report(runs_dir: Path, out_dir: Path, budget: dict) -> dict[str, Path]:
    """Append the targets section to leaderboard.md/.html; write targets.json (test verdicts, with
    the same comparison on dev under "dev": the split that decides what to change)."""
    measured = collect(runs_dir)
    result = evaluate_targets(measured, "test")
    result["dev"] = evaluate_targets(measured, "dev")
    result["settings"] = budget
    out_dir = Path(out_dir)
    paths = {"md": out_dir / "leaderboard.md", "html": out_dir / "leaderboard.html", "csv": out_dir / "leaderboard.csv",
             "png": out_dir / "leaderboard.png", "targets": out_dir / "targets.json"}
    section = markdown(result, budget)
    md = paths["md"].read_text()
    paths["md"].write_text(md.rstrip() + "\n\n" + section)
    page = paths["html"].read_text()
    block = f"<h2>Targets</h2><pre>{html.escape(section)}</pre>"
    paths["html"].write_text(page.replace("</body></html>", block + "</body></html>"))
    paths["targets"].write_text(json.dumps(_plain(result), indent=1))
    if budget.get("mode") != "QUICK":
        paths["machine"] = save_record(_plain(result), out_dir)  # type: ignore[arg-type]
    return paths
