"""`usad demo run --recipe usad2`: USAD 2.0's domain-aware weighting in miniature, end to end.

Stages (the Demo class' machinery: subprocesses, logs, done-markers, reruns skip finished stages):

  corpora, pool     as in `make demo`
  speech_teacher    make demo's speech teacher (ATST-Frame architecture, speech TRAINING splits)
  sound_teacher     the same architecture on the train split of the HEAR event_detection task
  music_teacher     ... on the train splits of pitch, instrument_family and drums
  distill-w10       usad distill from the three teachers, objective.domain_omega = 10 (each clip's
                    own-domain teacher weighs 10/12, the others 1/12: the paper's w)
  distill-equal     the same run (data, seed, steps, schedule) with domain_omega null: 1/3 each
  export-*          usad export of each
  superb-*/hear-*   both students and the three teachers through `usad superb run` (PR, KS, IC,
                    SID) and `usad hear run` (keywords, pitch, instrument_family, drums,
                    event_detection), as the demo evaluates
  leaderboard       usad leaderboard, plus a section saying, per task and per domain, whether
                    domain weighting helped: the w10 student minus the equal-weights student with
                    a 95% paired bootstrap interval over the test items (and over probe seeds where
                    a task ran with several), verdict helped / hurt / inconclusive

Domains of the evaluation tasks: speech = the SUPERB tasks and HEAR keywords; sound =
event_detection; music = pitch, instrument_family, drums. The teachers' training audio (no labels)
and the pool are what both students distil on; neither holds a file of any evaluation split.

The comparison reads per-item results from the tools' own output files (s3prl's test prediction
files, heareval's test.predictions.pkl) as (numerator, denominator) pairs whose sums give the
task's score exactly: correct / 1 for accuracies, edits / reference phones for PER, 2 x true
positives / (reference + system events) per file for the onset F-measure.
"""
from __future__ import annotations

import csv
import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from usad_upstream.checkpoint import atomic_write
from usad_upstream.distill.data import PAPER_SPEECH_SHARE

from .pipeline import DISTILL_LR, DISTILL_MIN_SECONDS, SUPERB_DATA, SUPERB_FEATURE_CACHE_MB, Demo, Stage
from .teachers import teacher_training_audio

TEACHERS = ("speech", "sound", "music")
STUDENTS = {"usad2_w10": 10, "usad2_equal": None}  # student -> objective.domain_omega
DOMAIN_OMEGA = 10  # the paper's w
TASK_DOMAINS = {
    ("SUPERB", "PR"): "speech", ("SUPERB", "KS"): "speech", ("SUPERB", "IC"): "speech", ("SUPERB", "SID"): "speech",
    ("HEAR", "keywords"): "speech", ("HEAR", "event_detection"): "sound",
    ("HEAR", "pitch"): "music", ("HEAR", "instrument_family"): "music", ("HEAR", "drums"): "music",
}
LOWER_IS_BETTER = {("SUPERB", "PR")}
BOOTSTRAP_DRAWS = 10_000


@dataclass(frozen=True)
class Usad2Budget:
    """Everything that makes QUICK quick; the evaluation fields mean what they mean in pipeline.Budget.
    No number here was chosen by looking at test scores."""

    corpora_size: str
    pool_size: str
    teachers: dict[str, tuple[int, int]]  # teacher -> (steps, clips per step)
    distill_steps: int
    distill_batch_seconds: float
    superb_steps: dict[str, int]
    superb_lr: float
    superb_accumulate: int
    hear_tasks: tuple[str, ...]
    hear_grid: str
    hear_grid_points: int
    eval_teachers: bool  # the teachers' scores are context; the verdict compares the two students
    # Seeds per probe. One: the students' comparison resamples the test items; three seeds for
    # both students would add ~16 min to a run budgeted at 60.
    probe_seeds: int = 1


# The speech teacher and every evaluation setting are make demo's FULL budget, the students its
# student's schedule. The music teacher gets the audio teacher's 1500 steps x 16 clips (notes and
# drum hits of 1 s or less). The sound teacher's only training split is event_detection's 60 clips
# of 10 s: 16 crops of 6 s per step would be 400 epochs at ~6x the audio per step of the others
# (the demo's critical path), so it takes 4 per step, about the speech teacher's 8 clips of ~3 s.
FULL = Usad2Budget(
    corpora_size="mini", pool_size="small",
    teachers={"speech": (1500, 8), "sound": (1500, 4), "music": (1500, 16)},
    distill_steps=1150, distill_batch_seconds=32.0,
    superb_steps={"PR": 200, "KS": 600, "SID": 600, "IC": 600}, superb_lr=1e-3, superb_accumulate=1,
    hear_tasks=("keywords", "pitch", "instrument_family", "drums", "event_detection"), hear_grid="fast",
    hear_grid_points=4, eval_teachers=True,
)
# A smoke run of every stage on the test suite's corpora: a task of each domain, the students only.
QUICK = Usad2Budget(
    corpora_size="test", pool_size="test", teachers={"speech": (10, 4), "sound": (10, 4), "music": (10, 4)},
    distill_steps=8, distill_batch_seconds=12.0,
    superb_steps={"PR": 6}, superb_lr=1e-3, superb_accumulate=1,
    hear_tasks=("keywords", "pitch", "event_detection"), hear_grid="faster", hear_grid_points=1, eval_teachers=False,
)


class Usad2Demo(Demo):
    """The usad2 recipe's run directory and stages."""

    title = "USAD 2.0 demo: domain-aware weighting (measured here, miniature)"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.budget = QUICK if self.quick else FULL  # type: ignore[assignment]

    def teacher_path(self, name: str) -> Path:
        return self.models / f"{name}_teacher.ckpt"

    def student_config(self, student: str) -> Path:
        """Both students' configs differ only in objective.domain_omega (and their run dirs)."""
        b = self.budget
        pool = self.corpora / "pool" / "manifest.tsv"
        if b.pool_size != b.corpora_size:
            pool = self.run / f"pool_{b.pool_size}" / "pool" / "manifest.tsv"
        seen = teacher_training_audio(self.corpora, self.models / "teacher_training_audio.tsv")
        config = {
            "run_dir": str(self.models / f"distill_{student}"),
            "model": {"size": "tiny"},
            "teachers": {t: {"kind": "atst_frame", "path": str(self.teacher_path(t)), "target": "ffn", "domain": t}
                         for t in TEACHERS},
            "objective": {"num_layers": 4, "head_hidden": None, "domain_omega": STUDENTS[student]},
            "data": {"manifests": [str(pool), str(seen)], "speech_share": PAPER_SPEECH_SHARE, "max_seconds": 4.0,
                     "min_seconds": DISTILL_MIN_SECONDS, "crop": "random", "num_workers": 0},
            "train": {"lr": DISTILL_LR, "warmup_steps": max(1, b.distill_steps // 10), "max_steps": b.distill_steps,
                      "batch_seconds": b.distill_batch_seconds, "device": "cpu", "precision": self.distill_precision,
                      "log_every": max(1, b.distill_steps // 20), "ckpt_every": max(1, b.distill_steps // 4),
                      "keep_last": 1, "seed": 0},
        }
        path = self.models / f"distill_{student}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def student_path(self, student: str) -> Path:
        return self.models / f"{student}.safetensors"

    def write_specs(self) -> dict[str, Path]:
        paths = {}
        for t in TEACHERS:
            path = self.models / f"{t}_teacher.yaml"
            path.write_text(yaml.safe_dump({"teachers": [{"kind": "atst_frame", "path": str(self.teacher_path(t))}]}))
            paths[f"{t}_teacher"] = path
        return paths

    def eval_models(self, student: Path) -> dict[str, tuple[list, list, tuple[str, ...]]]:
        models: dict[str, tuple[list, list, tuple[str, ...]]] = {}
        for name in STUDENTS:
            ckpt = self.student_path(name)
            models[name] = (["--upstream", "usad", "-k", ckpt], ["--module", "hear_api", "--model", ckpt], (f"export-{name}",))
        for name, spec in self.write_specs().items() if self.budget.eval_teachers else ():
            models[name] = (["--upstream", "usad_teacher", "-k", spec], ["--module", "hear_api.teacher", "--model", spec], (name,))
        return models

    def stages(self) -> list[Stage]:
        """The students' path first (distillations are the longest stages), then their
        evaluations, then the teachers' evaluations, which fill the second core meanwhile."""
        b = self.budget
        builds = [Stage("corpora", self.usad("corpora", "build", "--out", self.corpora, "--size", b.corpora_size),
                        [self.corpora / "pool" / "manifest.tsv", self.corpora / "hear" / "tasks"])]
        if b.pool_size != b.corpora_size:
            out = self.run / f"pool_{b.pool_size}"
            builds.append(Stage("pool", self.usad("corpora", "build", "--out", out, "--size", b.pool_size, "--stage", "pool"),
                                [out / "pool" / "manifest.tsv"]))
        teachers = []
        for t in TEACHERS:
            steps, batch = b.teachers[t]
            teachers.append(Stage(f"{t}_teacher", self.usad("demo", "teacher", t, "--corpora", self.corpora, "-o",
                                                             self.teacher_path(t), "--steps", steps, "--batch", batch),
                                  [self.teacher_path(t)], needs=("corpora",)))
        students = []
        for name in STUDENTS:
            run = self.models / f"distill_{name}"
            students.append(Stage(f"distill-{name}", self.usad("distill", "--config", self.models / f"distill_{name}.yaml"),
                                  [run / "checkpoints"], clean=[run], needs=tuple(s.name for s in builds + teachers),
                                  prepare=lambda name=name: self.student_config(name)))
            students.append(Stage(f"export-{name}", self.usad("export", run, "-o", self.student_path(name)),
                                  [self.student_path(name)], needs=(f"distill-{name}",)))
        evals = self.eval_stages(self.student_path(next(iter(STUDENTS))))
        student_evals = [s for s in evals if s.name.split("-")[-1] in STUDENTS]
        return builds + teachers + students + student_evals + [s for s in evals if s not in student_evals]

    def report(self) -> dict[str, Path]:
        result = compare_students(self.run / "eval", "usad2_w10", "usad2_equal", self.budget)
        paths = {"md": self.results / "leaderboard.md", "html": self.results / "leaderboard.html",
                 "csv": self.results / "leaderboard.csv", "png": self.results / "leaderboard.png",
                 "domain_weighting": self.results / "domain_weighting.json"}
        section = markdown(result, self.budget_summary())
        md = paths["md"].read_text()
        atomic_write(paths["md"], lambda tmp: Path(tmp).write_text(md.rstrip() + "\n\n" + section))
        page = paths["html"].read_text()
        import html

        block = f"<h2>Domain-aware weighting</h2><pre>{html.escape(section)}</pre>"
        atomic_write(paths["html"], lambda tmp: Path(tmp).write_text(page.replace("</body></html>", block + "</body></html>")))
        atomic_write(paths["domain_weighting"], lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
        return paths

    def budget_summary(self) -> dict:
        b = self.budget
        return {"mode": "QUICK" if self.quick else "full", "corpora": b.corpora_size, "pool": b.pool_size,
                "teacher steps x clips": {t: list(v) for t, v in b.teachers.items()},
                "students": {n: {"domain_omega": w} for n, w in STUDENTS.items()},
                "distill steps": b.distill_steps, "distill batch seconds": b.distill_batch_seconds, "distill lr": DISTILL_LR,
                "distill min clip seconds": DISTILL_MIN_SECONDS, "distill precision": self.distill_precision,
                "distill speech share (the paper's Mix126k-B)": round(PAPER_SPEECH_SHARE, 4),
                "SUPERB steps": b.superb_steps, "SUPERB feature cache MB": SUPERB_FEATURE_CACHE_MB,
                "SUPERB lr": b.superb_lr, "HEAR grid": f"{b.hear_grid} ({b.hear_grid_points} points)",
                "bootstrap draws": BOOTSTRAP_DRAWS, "stage seconds": self.timings}


# ----------------------------------------------------------------------------- per-item scores
Items = dict[str, tuple[float, float]]  # item id -> (numerator, denominator) of the task's score


def _label_file(path: Path, sep: str) -> dict[str, str]:
    """`name<sep>label...` lines -> {name: the rest of the line}."""
    with open(path) as handle:
        return {name: rest for name, _, rest in (line.rstrip("\n").partition(sep) for line in handle) if name}


def superb_items(expdir: Path, task: str) -> Items:
    """Per test item results of one s3prl run, from the prediction files its expert writes."""
    import editdistance

    expdir = Path(expdir)
    if task == "PR":
        hyp, ref = (_label_file(expdir / f"test-{kind}.ark", " ") for kind in ("hyp", "ref"))
        return {k: (float(editdistance.eval(hyp[k].split(), ref[k].split())), float(len(ref[k].split()))) for k in ref}
    suffix, sep = (".csv", ",") if task == "IC" else (".txt", " ")
    predict, truth = (_label_file(expdir / f"test_{kind}{suffix}", sep) for kind in ("predict", "truth"))
    if set(predict) != set(truth):
        raise ValueError(f"{expdir}: test predictions and truths name different files")
    return {k: (float(predict[k] == truth[k]), 1.0) for k in truth}


def hear_items(task_dir: Path) -> Items:
    """Per test item results of one heareval task (its test.predictions.pkl): top-1 correctness
    for scene tasks, per-file onset F-measure counts (2 TP, reference + system events) for events."""
    import torch  # the pickle holds torch tensors

    with open(Path(task_dir) / "test.predictions.pkl", "rb") as handle:
        predictions = pickle.load(handle)
    if "predicted_events" not in predictions:
        correct = torch.argmax(predictions["prediction"], 1) == torch.argmax(predictions["target"], 1)
        return {str(i): (float(c), 1.0) for i, c in enumerate(correct.tolist())}
    import sed_eval
    from heareval.score import SoundEventScore

    metadata = json.loads((Path(task_dir) / "task_metadata.json").read_text())
    if metadata["evaluation"][0] != "event_onset_200ms_fms":
        raise ValueError(f"{task_dir}: primary score {metadata['evaluation'][0]}, the per-file counts are for event_onset_200ms_fms")
    with open(Path(task_dir) / "labelvocabulary.csv", newline="") as handle:
        labels = [row["label"] for row in csv.DictReader(handle)]  # heareval's event_label_list
    items = {}
    for filename in predictions["target_events"]:
        metrics = sed_eval.sound_event.EventBasedMetrics(
            event_label_list=labels, evaluate_onset=True, evaluate_offset=False, t_collar=0.2)
        metrics.evaluate(
            reference_event_list=SoundEventScore.sed_eval_event_container({filename: predictions["target_events"][filename]}),
            estimated_event_list=SoundEventScore.sed_eval_event_container({filename: predictions["predicted_events"].get(filename, [])}),
        )
        o = metrics.overall
        items[filename] = (2.0 * o["Ntp"], float(o["Nref"] + o["Nsys"]))
    return items


def collect_items(runs_dir: Path, model: str, hear_tasks: "tuple[str, ...]", superb_tasks: "tuple[str, ...]") -> dict[tuple[str, str], list[Items]]:
    """(benchmark, task) -> per-seed item results of `model`: its run directory, or one
    `seed-N/` folder per probe seed in it (`usad superb/hear run --seed`); missing runs are left out."""
    runs_dir = Path(runs_dir)
    found: dict[tuple[str, str], list[Items]] = {}
    for task in superb_tasks:
        base = runs_dir / "superb" / task / model
        dirs = [base, *sorted(base.glob("seed-*"))] if base.is_dir() else []
        seeds = [superb_items(d, task) for d in dirs if any(d.glob("test*"))]
        if seeds:
            found[("SUPERB", task)] = seeds
    for task in hear_tasks:
        base = runs_dir / "hear" / model
        places = [*sorted(base.glob(f"embeddings/*/{task}")), *sorted(base.glob(f"seed-*/{task}"))]
        seeds = [hear_items(t) for t in places if (t / "test.predictions.pkl").is_file()]
        if seeds:
            found[("HEAR", task)] = seeds
    return found


# ----------------------------------------------------------------------------- comparison
def _arrays(seeds: list[Items], items: list[str]) -> tuple[np.ndarray, np.ndarray]:
    num = np.array([[s[i][0] for i in items] for s in seeds], dtype=np.float64)
    den = np.array([[s[i][1] for i in items] for s in seeds], dtype=np.float64)
    return num, den


def _score(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """100 x sum(num) / sum(den) over the last axis (a percent score)."""
    total = den.sum(-1)
    return 100.0 * num.sum(-1) / np.where(total > 0, total, np.nan)


def bootstrap_gain(a: list[Items], b: list[Items], lower_is_better: bool, rng: np.random.Generator,
                   draws: int = BOOTSTRAP_DRAWS) -> tuple[float, float, float, np.ndarray]:
    """Gain of b over a (higher = b better), its point estimate and the draws of a paired bootstrap:
    the same resampled test items for both models, each model's probe seeds resampled on their own
    (a seed's score is computed on the resampled items; a model's score is the mean over seeds)."""
    items = sorted(a[0])
    if any(sorted(s) != items for s in a + b):
        raise ValueError("the two models were scored on different test items")
    idx = rng.integers(0, len(items), size=(draws, len(items)))
    scores = []
    for seeds in (a, b):
        num, den = _arrays(seeds, items)
        per_seed = np.stack([_score(num[s][idx], den[s][idx]) for s in range(len(seeds))], axis=1)  # [draws, seeds]
        pick = rng.integers(0, len(seeds), size=(draws, len(seeds)))
        scores.append((float(np.mean(_score(num, den))), np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)))
    sign = -1.0 if lower_is_better else 1.0
    gains = sign * (scores[1][1] - scores[0][1])
    return scores[0][0], scores[1][0], sign * (scores[1][0] - scores[0][0]), gains


def verdict(low: float, high: float) -> str:
    return "helped" if low > 0 else "hurt" if high < 0 else "inconclusive"


def tool_scores(runs_dir: Path) -> dict[tuple[str, str, str], float]:
    """(model, benchmark, task) -> the test score the leaderboard shows (s3prl's and heareval's own)."""
    from results.collect import collect

    df = collect(runs_dir)
    if df.empty:
        return {}
    df = df[(df["split"] == "test") & df["score"].notna()].sort_values("date")
    return {(r.model, r.benchmark, r.task): float(r.score) for r in df.itertuples()}


def compare_students(runs_dir: Path, weighted: str, equal: str, budget: Usad2Budget, seed: int = 0) -> dict:
    """Per task and per domain: the weighted student's gain over the equal-weights one, with its
    95% interval and verdict. A task with a missing run, or whose item results do not add up to
    the score the tool itself reported, is a gap (and so is its domain)."""
    hear, superb = tuple(budget.hear_tasks), tuple(budget.superb_steps)
    a, b = collect_items(runs_dir, equal, hear, superb), collect_items(runs_dir, weighted, hear, superb)
    reported = tool_scores(runs_dir)
    rng = np.random.default_rng(seed)
    tasks, by_domain = [], {}
    for key, domain in TASK_DOMAINS.items():
        if key[1] not in hear + superb:
            continue
        row = {"benchmark": key[0], "task": key[1], "domain": domain, "metric": "PER" if key in LOWER_IS_BETTER else "score",
               "lower_is_better": key in LOWER_IS_BETTER}
        if key not in a or key not in b:
            row.update(status="gap: a run or its prediction files are missing")
            tasks.append(row)
            by_domain.setdefault(domain, []).append(None)
            continue
        score_a, score_b, gain, draws = bootstrap_gain(a[key], b[key], key in LOWER_IS_BETTER, rng)
        mismatch = [f"{m} {mine:.2f} vs {reported.get((m, *key), math.nan):.2f}" for m, mine, seeds in
                    ((equal, score_a, a[key]), (weighted, score_b, b[key]))
                    if len(seeds) == 1 and not abs(mine - reported.get((m, *key), math.nan)) <= 0.01]
        if mismatch:  # a reader that misparsed the tool's files must not decide a verdict
            row.update(status=f"gap: item results do not reproduce the reported score ({'; '.join(mismatch)})")
            tasks.append(row)
            by_domain.setdefault(domain, []).append(None)
            continue
        low, high = (float(q) for q in np.percentile(draws, [2.5, 97.5]))
        row.update({equal: score_a, weighted: score_b, "gain": gain, "ci95": [low, high], "verdict": verdict(low, high),
                    "items": len(a[key][0]), "seeds": {equal: len(a[key]), weighted: len(b[key])}})
        tasks.append(row)
        by_domain.setdefault(domain, []).append((gain, draws))
    domains = {}
    for domain, parts in by_domain.items():
        if any(p is None for p in parts):
            domains[domain] = {"status": "gap", "tasks": len(parts)}
            continue
        gain = float(np.mean([g for g, _ in parts]))
        draws = np.mean([d for _, d in parts], axis=0)
        low, high = (float(q) for q in np.percentile(draws, [2.5, 97.5]))
        domains[domain] = {"gain": gain, "ci95": [low, high], "verdict": verdict(low, high), "tasks": len(parts)}
    return {"weighted": weighted, "equal": equal, "domain_omega": DOMAIN_OMEGA, "tasks": tasks, "domains": domains,
            "method": "gain = weighted minus equal-weights student in percent points (PER: equal minus weighted, so "
                      "positive always means weighting helped); 95% percentile interval of a paired bootstrap over "
                      f"test items ({BOOTSTRAP_DRAWS} draws; probe seeds resampled per model where there are several); "
                      "a domain's gain is the mean of its tasks' gains, drawn jointly; helped / hurt when the "
                      "interval excludes 0, else inconclusive"}


def _fmt(x: object, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) and math.isfinite(x) else "gap"


def markdown(result: dict, budget: dict) -> str:
    w, e = result["weighted"], result["equal"]
    lines = ["## Domain-aware weighting: did it help on each domain?", ""]
    if budget.get("mode") == "QUICK":
        lines += ["QUICK run: smoke-test budgets (tens of training steps), so scores sit near chance and the "
                  "verdicts below say nothing about the method; run `usad demo run --recipe usad2` for the real comparison.", ""]
    lines += [f"`{w}` distilled with domain_omega = {result['domain_omega']} (a clip's own-domain teacher 10/12, the "
              f"others 1/12), `{e}` with equal weights (1/3 each); same teachers, data, seed and steps. "
              "One distillation per student: the intervals cover the test items (and probe seeds), not "
              "distillation seeds.", "", "| domain | gain (points) | 95% interval | verdict | tasks |", "|---|---|---|---|---|"]
    for domain, d in result["domains"].items():
        if "gain" in d:
            lines.append(f"| {domain} | {d['gain']:+.2f} | [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | **{d['verdict']}** | {d['tasks']} |")
        else:
            lines.append(f"| {domain} | gap | | not established | {d['tasks']} |")
    lines += ["", f"| benchmark | task | domain | {e} | {w} | gain | 95% interval | verdict | items | seeds |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["tasks"]:
        if "gain" not in r:
            lines.append(f"| {r['benchmark']} | {r['task']} | {r['domain']} | | | | | {r['status']} | | |")
            continue
        unit = " PER" if r["lower_is_better"] else ""
        lines.append(f"| {r['benchmark']} | {r['task']} | {r['domain']} | {_fmt(r[e])}{unit} | {_fmt(r[w])}{unit} | "
                     f"{r['gain']:+.2f} | [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] | {r['verdict']} | {r['items']} | "
                     f"{r['seeds'][e]} / {r['seeds'][w]} |")
    lines += ["", result["method"] + ".", "",
              "Settings of this run (fixed in downstream_recipes/demo/usad2.py; nothing was tuned on a test split):",
              "", "```", json.dumps(budget, indent=1), "```", ""]
    return "\n".join(lines)
