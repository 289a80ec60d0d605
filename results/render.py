"""Turn the tidy table into leaderboards: CSV, Markdown, a self-contained HTML page and a PNG.

Measured rows and published rows are always labelled as such ("measured here" / "published").
A task that was started but has no test score shows its status in place of a number
("— running", "— failed", ...); a task never started is left empty. A measured number is the
mean over its probe seeds, with its 95% interval in brackets when there is one to show (several
seeds, or per-item predictions: results.uncertainty); the chart draws the intervals as error bars.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .published import COLUMNS, MEASURED, PUBLISHED, superb_baselines
from .scores import hear_average, superb_score
from .tasks import HEAR, HEAR_OFFICIAL, SUPERB, SUPERB_TASKS, XARES, XARES_METHODS, is_primary_metric
from .uncertainty import summarise

# Published models drawn in the chart next to the measured ones (all stay in the tables).
CHART_PUBLISHED = {SUPERB: ("FBANK", "WavLM Base+", "USAD Base"), HEAR: ("WavLM Base+", "ATST-Frame", "USAD Base")}
FBANK_NAMES = ("fbank",)


def _labels(measured: pd.DataFrame) -> dict[tuple[str, str], str]:
    """Model labels; a name used with several checkpoints gets the checkpoint hash appended."""
    pairs = measured[["model", "checkpoint_hash"]].drop_duplicates()
    counts = pairs["model"].value_counts()
    out = {}
    for model, ckpt in pairs.itertuples(index=False):
        out[(model, ckpt)] = f"{model} [{ckpt[:8]}]" if counts[model] > 1 and ckpt else model
    return out


def _task_order(benchmark: str, tasks: "set[str]") -> list[str]:
    canonical = list(SUPERB_TASKS) if benchmark == SUPERB else list(HEAR_OFFICIAL)
    return [t for t in canonical if t in tasks] + sorted(t for t in tasks if t not in canonical)


def _task_header(benchmark: str, task: str) -> str:
    if benchmark == SUPERB and task in SUPERB_TASKS:
        spec = SUPERB_TASKS[task]
        return f"{task} ({spec.metric.upper()} {'↑' if spec.higher_is_better else '↓'})"
    return task


@dataclass
class Board:
    """One benchmark's wide table: rows are models, columns tasks + benchmark score."""

    benchmark: str
    title: str
    table: pd.DataFrame  # display strings
    numbers: pd.DataFrame  # floats (NaN for gaps), same shape over the task columns
    bounds: dict[tuple[str, str], tuple[float, float]]  # (model label, task) -> 95% interval, where shown
    tasks: list[str]
    attempted: list[str]  # tasks with a measured row (a score or a gap)
    notes: list[str]


def _fmt(x: float, task: str) -> str:
    """Two decimals (percent units); MTWV, the one score on a 0..1 scale, gets four."""
    return f"{x:.4f}" if task == "QbE" else f"{x:.2f}"


def _measured_cells(rows: pd.DataFrame) -> tuple[dict[str, str], dict[str, float], dict[str, tuple[float, float]]]:
    """(display cell, score, 95% interval) per task of one model's summarised rows; the interval
    is shown where it says something (several seeds or resampled items); a gap shows its status."""
    cells, values, spans = {}, {}, {}
    for rec in rows.itertuples(index=False):
        if pd.notna(rec.score):
            cells[rec.task], values[rec.task] = _fmt(rec.score, rec.task), float(rec.score)
            if rec.resampled != "seeds only" or len(rec.seeds.split()) > 1:
                cells[rec.task] += f" [{_fmt(rec.low, rec.task)}, {_fmt(rec.high, rec.task)}]"
                spans[rec.task] = (float(rec.low), float(rec.high))
        else:
            cells[rec.task] = f"— {rec.status}"
    return cells, values, spans


def build_board(benchmark: str, measured: pd.DataFrame, published: pd.DataFrame, official: bool = True) -> "Board | None":
    """The wide table of one benchmark. HEAR tasks outside the official 19 (local corpora) go to
    their own board (official=False), which has no published rows to compare with."""
    m = summarise(measured[(measured["benchmark"] == benchmark) & (measured["split"] == "test")])
    p = published[(published["benchmark"] == benchmark) & (published["split"] == "test")]
    if benchmark == HEAR:
        m = m[m["task"].isin(HEAR_OFFICIAL) == official]
        p = p if official else p.iloc[0:0]
    if benchmark == SUPERB:  # only the primary metric ranks a SUPERB task (the runs table lists the others)
        primary = [SUPERB_TASKS[t].metric == metric for t, metric in zip(p["task"], p["metric"])]
        p = p[pd.Series(primary, index=p.index, dtype=bool)]
        if not m.empty:
            m = m[[is_primary_metric(SUPERB, t, metric) for t, metric in zip(m["task"], m["metric"])]]
    if m.empty and p.empty:
        return None
    tasks = _task_order(benchmark, set(m["task"]) | set(p["task"]))
    labels = _labels(m) if not m.empty else {}
    rows, nums = [], []
    bounds: dict[tuple[str, str], tuple[float, float]] = {}
    notes: list[str] = []
    fbank_pub, sota = superb_baselines()
    fbank_meas = {}
    if benchmark == SUPERB:
        fb = m[m["model"].str.lower().isin(FBANK_NAMES) & m["score"].notna()]
        fbank_meas = dict(zip(fb["task"], fb["score"]))

    def add(label: str, source: str, cells: dict[str, str], values: dict[str, float]) -> None:
        row = {"Model": label, "Source": source}
        row.update({_task_header(benchmark, t): cells.get(t, "") for t in tasks})
        if benchmark == SUPERB:
            s = superb_score(values, fbank_pub, sota, tuple(t for t in tasks if t in values))
            row["SUPERB score"] = f"{s.value:.1f} ({len(s.tasks)} tasks)" if s.value is not None else ""
            if fbank_meas:  # a local fbank baseline only makes sense for numbers measured here
                sm = superb_score(values, fbank_meas, sota, tuple(t for t in tasks if t in values))
                row["SUPERB score vs measured fbank"] = (
                    f"{sm.value:.1f} ({len(sm.tasks)} tasks)" if source == MEASURED and sm.value is not None else ""
                )
        else:
            a = hear_average(values)
            official = [t for t in a.tasks if t in HEAR_OFFICIAL]
            row["HEAR average"] = (
                f"{a.value:.1f} ({len(a.tasks)} tasks{'' if len(official) == len(a.tasks) else f', {len(official)} official'})"
                if a.value is not None else ""
            )
        rows.append(row)
        nums.append({"Model": label, "Source": source, **{t: values.get(t, math.nan) for t in tasks}})

    for key, label in labels.items():
        cells, values, spans = _measured_cells(m[(m["model"] == key[0]) & (m["checkpoint_hash"] == key[1])])
        bounds.update({(label, task): span for task, span in spans.items()})
        add(label, MEASURED, cells, values)
    for model, sub in p.groupby("model", sort=False):
        values = dict(zip(sub["task"], sub["score"].astype(float)))
        add(str(model), f"{PUBLISHED} ({sub['run_id'].iloc[0]})", {t: _fmt(v, t) for t, v in values.items()}, values)

    if benchmark == SUPERB:
        notes.append(
            "SUPERB score = 1000/|T| Σ (s − s_fbank)/(s_SOTA − s_fbank), error rates sign-flipped, over the tasks "
            "each row has; s_fbank = published FBANK row, s_SOTA = best published number per task."
            + (" 'vs measured fbank' uses the fbank upstream measured here instead." if fbank_meas else "")
        )
        notes.append("Measured numbers on local corpora are not comparable with published numbers on the real datasets.")
    else:
        notes.append("HEAR average = mean primary score (x100) over the tasks each row has; the paper averages 19 tasks.")
    if bounds:
        notes.append("Measured: mean over probe seeds [95% interval: percentile bootstrap over seeds x test items "
                     "(x voices where the dataset names them)]; `leaderboard_summary.csv` says what each resampled.")
    attempted = [t for t in tasks if t in set(m["task"])]
    title = benchmark if official else f"{benchmark}: other tasks (measured here only)"
    return Board(benchmark, title, pd.DataFrame(rows), pd.DataFrame(nums), bounds, tasks, attempted, notes)


def build_xares_board(measured: pd.DataFrame, method: str) -> "Board | None":
    """The X-ARES table of one protocol ("mlp" probe or "knn"), measured rows only: no published
    X-ARES numbers exist for local tasks. The mean is a plain one over each row's tasks; X-ARES
    weighs tasks by test size, which `usad xares run` prints per run from xares's own function."""
    m = measured[(measured["benchmark"] == XARES) & (measured["split"] == "test")]
    m = summarise(m[m["metric"].str.startswith(f"{method}_")])
    if m.empty:
        return None
    tasks = sorted(set(m["task"]))
    rows, nums = [], []
    bounds: dict[tuple[str, str], tuple[float, float]] = {}
    for key, label in _labels(m).items():
        cells, values, spans = _measured_cells(m[(m["model"] == key[0]) & (m["checkpoint_hash"] == key[1])])
        bounds.update({(label, task): span for task, span in spans.items()})
        mean = sum(values.values()) / len(values) if values else None
        rows.append({"Model": label, "Source": MEASURED, **{t: cells.get(t, "") for t in tasks},
                     "X-ARES mean": f"{mean:.1f} ({len(values)} tasks)" if mean is not None else ""})
        nums.append({"Model": label, "Source": MEASURED, **{t: values.get(t, math.nan) for t in tasks}})
    metrics = ", ".join(f"{task}: {metric[len(method) + 1:]}" for task, metric in
                        sorted(set(zip(m["task"], m["metric"]))))
    notes = [f"X-ARES {XARES_METHODS[method]} scores x100 from xares's own score files ({metrics}); "
             "X-ARES mean = plain mean over the tasks each row has.",
             "Measured on local tasks (usad corpora build): not comparable with published X-ARES numbers."]
    return Board(XARES, f"X-ARES ({XARES_METHODS[method]})", pd.DataFrame(rows), pd.DataFrame(nums), bounds, tasks, tasks, notes)


def runs_table(measured: pd.DataFrame) -> pd.DataFrame:
    """One line per measured run and task: dev and test side by side, with status."""
    cols = ["benchmark", "model", "checkpoint_hash", "task", "metric", "dev", "test", "status", "run_id", "date"]
    lines = []
    for _, sub in measured.groupby(["benchmark", "model", "checkpoint_hash", "task", "metric", "run_id"], sort=True):
        by_split = {r.split: r for r in sub.itertuples(index=False)}
        first = sub.iloc[0]
        test = by_split.get("test")
        line = {c: first[c] for c in ("benchmark", "model", "checkpoint_hash", "task", "metric", "run_id", "date")}
        for split in ("dev", "test"):
            r = by_split.get(split)
            line[split] = _fmt(r.score, r.task) if r is not None and pd.notna(r.score) else "—"
        line["status"] = test.status if test is not None else first["status"]
        lines.append(line)
    return pd.DataFrame(lines, columns=cols)


def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in rec) + " |")
    return "\n".join(lines)


def chart_png(boards: list[Board]) -> bytes:
    """Grouped bars per task: measured models solid, selected published models hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [b.attempted or b.tasks for b in boards]
    fig, axes = plt.subplots(len(boards), 1, figsize=(max(7.0, 1.1 * max(len(t) for t in chosen) + 3), 4.2 * len(boards)),
                             squeeze=False)
    for ax, board, tasks in zip(axes[:, 0], boards, chosen):
        nums = board.numbers
        nums = nums[(nums["Source"] == MEASURED) | nums["Model"].isin(CHART_PUBLISHED.get(board.benchmark, ()))]
        width = 0.8 / max(1, len(nums))
        for i in range(len(nums)):
            rec = nums.iloc[i]
            values = [rec[t] for t in tasks]
            xs = [j + i * width for j in range(len(tasks))]
            measured = rec["Source"] == MEASURED
            heights = [0 if pd.isna(v) else v for v in values]
            spans = [board.bounds.get((rec["Model"], t)) if measured else None for t in tasks]
            errors = [[h - s[0] if s else 0 for h, s in zip(heights, spans)], [s[1] - h if s else 0 for h, s in zip(heights, spans)]]
            ax.bar(xs, heights, width, label=f"{rec['Model']} ({MEASURED if measured else PUBLISHED})",
                   hatch=None if measured else "//", alpha=1.0 if measured else 0.6,
                   yerr=errors if any(spans) else None, capsize=2, error_kw={"elinewidth": 0.8})
            cells = board.table.iloc[int(nums.index[i])]
            for x, t in zip(xs, tasks):
                cell = str(cells[_task_header(board.benchmark, t)])
                if cell.startswith("—"):  # started but no score: say why instead of drawing nothing
                    ax.text(x, 0, cell.lstrip("— "), ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_xticks([j + (len(nums) - 1) * width / 2 for j in range(len(tasks))])
        ax.set_xticklabels([_task_header(board.benchmark, t) for t in tasks], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{board.title}: per-task scores" + (" (bars: 95% intervals)" if board.bounds else ""))
        ax.set_ylabel("score (%)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f2f2f2}td:first-child,td:nth-child(2){text-align:left}"
    "tr.measured{background:#eef6ee}tr.published{color:#444}.gap{color:#b00}.note{color:#555;font-size:13px}"
)


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for rec in df.itertuples(index=False):
        source = str(rec[1]) if len(rec) > 1 else ""
        cls = "measured" if source == MEASURED else ("published" if source.startswith(PUBLISHED) else "")
        cells = "".join(
            f"<td class='gap'>{html.escape(str(v))}</td>" if str(v).startswith("—") else f"<td>{html.escape(str(v))}</td>"
            for v in rec
        )
        body.append(f"<tr class='{cls}'>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render(measured: pd.DataFrame, published: pd.DataFrame, out_dir: "str | Path", title: str = "USAD leaderboard") -> dict[str, Path]:
    """Write leaderboard.{csv,md,html,png} into out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # all-empty columns (published rows have no seed) left out of the concat, then restored
    frames = [f.dropna(axis=1, how="all") for f in (measured, published) if not f.empty]
    tidy = pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS) if frames else measured
    paths = {"csv": out / "leaderboard.csv", "md": out / "leaderboard.md", "html": out / "leaderboard.html",
             "summary": out / "leaderboard_summary.csv"}
    tidy.to_csv(paths["csv"], index=False)
    summarise(measured).to_csv(paths["summary"], index=False)
    boards = [b for b in (build_board(SUPERB, measured, published), build_board(HEAR, measured, published),
                          build_board(HEAR, measured, published, official=False),
                          *(build_xares_board(measured, method) for method in XARES_METHODS)) if b is not None]
    runs = runs_table(measured)

    # The chart compares what was measured; published-only boards are in the tables.
    charted = [b for b in boards if b.attempted] or boards
    png = chart_png(charted) if charted else b""
    if png:
        paths["png"] = out / "leaderboard.png"
        paths["png"].write_bytes(png)

    md = [f"# {title}", "", f"Measured rows: {int((measured['split'] == 'test').sum()) if not measured.empty else 0} task runs; "
          "every row is labelled 'measured here' or 'published'.", ""]
    for b in boards:
        md += [f"## {b.title}", "", _md_table(b.table), ""] + [f"- {n}" for n in b.notes] + [""]
    md += ["## Measured runs", "", _md_table(runs) if not runs.empty else "No measured runs found.", ""]
    if png:
        md += ["![per-task scores](leaderboard.png)", ""]
    paths["md"].write_text("\n".join(md))

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for b in boards:
        parts += [f"<h2>{html.escape(b.title)}</h2>", _html_table(b.table)] + [f"<p class='note'>{html.escape(n)}</p>" for n in b.notes]
    parts += ["<h2>Measured runs</h2>", _html_table(runs) if not runs.empty else "<p>No measured runs found.</p>"]
    if png:
        parts.append(f"<h2>Chart</h2><img alt='per-task scores' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("</body></html>")
    paths["html"].write_text("\n".join(parts))
    return paths
