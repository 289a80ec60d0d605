"""The demo's claim, checked on the measured numbers and written into the leaderboard.

Targets (a miniature of the paper's Table III/IV claim):
1. speech tasks: the student keeps >= 90% of the speech teacher's score (error rates <= 1.1x);
2. audio tasks: the student keeps >= 90% of the audio teacher's score;
3. the student's average over all tasks beats each teacher's.
Averages use "higher is better" percent scores (100 - PER for PR). A missing score is a gap and
the target it belongs to is reported as not established, never as met.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from results.collect import collect
from results.tasks import SUPERB, SUPERB_TASKS

STUDENT, SPEECH, AUDIO = "usad_student", "speech_teacher", "audio_teacher"
SPEECH_HEAR_TASKS = ("keywords",)  # HEAR tasks of the speech domain; every other HEAR task is audio


def _scores(runs_dir: Path) -> pd.DataFrame:
    """[model x (benchmark, task)] test scores, NaN for gaps."""
    df = collect(runs_dir)
    if df.empty:
        return pd.DataFrame()
    df = df[df["split"] == "test"]
    df = df[[b != SUPERB or t not in SUPERB_TASKS or SUPERB_TASKS[t].metric == m
             for b, t, m in zip(df["benchmark"], df["task"], df["metric"])]]  # SF also logs slot-value CER
    df = df.sort_values("date").groupby(["model", "benchmark", "task"], as_index=False).last()
    return df.pivot(index="model", columns=["benchmark", "task"], values="score")


def _lower_is_better(benchmark: str, task: str) -> bool:
    return benchmark == SUPERB and task in SUPERB_TASKS and not SUPERB_TASKS[task].higher_is_better


def _goodness(benchmark: str, task: str, score: float) -> float:
    return 100.0 - score if _lower_is_better(benchmark, task) else score


def evaluate_targets(table: pd.DataFrame) -> dict:
    """Per-task ratios and the three targets from a [model x (benchmark, task)] table."""
    rows, checks = [], {"speech": [], "audio": []}
    columns = list(table.columns) if not table.empty else []
    for benchmark, task in columns:
        domain = "speech" if benchmark == SUPERB or task in SPEECH_HEAR_TASKS else "audio"
        teacher = SPEECH if domain == "speech" else AUDIO
        s = table.at[STUDENT, (benchmark, task)] if STUDENT in table.index else math.nan
        t = table.at[teacher, (benchmark, task)] if teacher in table.index else math.nan
        lower = _lower_is_better(benchmark, task)
        if math.isnan(s) or math.isnan(t):
            ok, ratio = None, math.nan
        elif lower:
            ratio = s / t if t > 0 else (1.0 if s == 0 else math.inf)
            ok = bool(ratio <= 1.1)
        else:
            ratio = s / t if t > 0 else (1.0 if s >= t else 0.0)
            ok = bool(ratio >= 0.9)
        checks[domain].append(ok)
        rows.append({"benchmark": benchmark, "task": task, "domain": domain, "teacher": teacher,
                     "teacher_score": t, "student_score": s, "ratio": ratio,
                     "rule": "student <= 1.1 x teacher (error rate)" if lower else "student >= 0.9 x teacher", "met": ok})
    averages = {}
    for model in table.index:
        values = [_goodness(b, t, table.at[model, (b, t)]) for b, t in columns]
        averages[model] = math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)

    def verdict(oks: list) -> "bool | None":
        if not oks or any(ok is None for ok in oks):
            return None
        return all(oks)

    avg_s, avg_sp, avg_au = (averages.get(m, math.nan) for m in (STUDENT, SPEECH, AUDIO))
    beats = None if any(math.isnan(v) for v in (avg_s, avg_sp, avg_au)) else bool(avg_s > avg_sp and avg_s > avg_au)
    return {
        "tasks": rows, "averages": averages,
        "targets": {
            "speech: student >= 90% of the speech teacher on every speech task": verdict(checks["speech"]),
            "audio: student >= 90% of the audio teacher on every audio task": verdict(checks["audio"]),
            "average: student above both teachers over all tasks": beats,
        },
    }


def _plain(value: object) -> object:
    """JSON-safe copy: NaN -> null, numpy scalars -> float."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else number


def _fmt(x: float, digits: int = 2) -> str:
    return "gap" if isinstance(x, float) and math.isnan(x) else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def _word(ok: "bool | None") -> str:
    return {True: "MET", False: "MISSED", None: "NOT ESTABLISHED (gap)"}[ok]


def markdown(result: dict, budget: dict) -> str:
    lines = ["## Targets (the paper's claim in miniature)", ""]
    if budget.get("mode") == "QUICK":
        lines += ["QUICK run: smoke-test budgets (tens of training steps), so scores sit near chance and the "
                  "verdicts below say nothing about the method; run `make demo` for the real comparison.", ""]
    for name, ok in result["targets"].items():
        lines.append(f"- **{_word(ok)}** — {name}")
    lines += ["", "| benchmark | task | domain | teacher | teacher score | student score | student / teacher | rule | met |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["tasks"]:
        lines.append(f"| {r['benchmark']} | {r['task']} | {r['domain']} | {r['teacher']} | {_fmt(r['teacher_score'])} | "
                     f"{_fmt(r['student_score'])} | {_fmt(r['ratio'], 3)} | {r['rule']} | {_word(r['met'])} |")
    lines += ["", "Average over all tasks (percent, higher is better; PR counted as 100 - PER):", ""]
    lines += [f"- {m}: {_fmt(v)}" for m, v in sorted(result["averages"].items(), key=lambda kv: str(kv[0]))]
    lines += ["", "Settings of this run (fixed in downstream_recipes/demo/pipeline.py; nothing was tuned on a test split):",
              "", "```", json.dumps(budget, indent=1), "```", ""]
    return "\n".join(lines)


def targets_report(runs_dir: Path, out_dir: Path, budget: dict) -> dict[str, Path]:
    """Append the targets section to leaderboard.md/.html and write targets.json."""
    result = evaluate_targets(_scores(runs_dir))
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
    return paths
