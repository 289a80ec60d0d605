"""`usad superb run`, `usad hear run` and `usad leaderboard`: thin wrappers over the recipes.

    usad superb run --task ks --upstream usad -k CKPT --data ROOT [--device cuda] [--name N] [--quick] [--verbose]
    usad hear run --module hear_api --model CKPT --tasks-dir DIR [--grid fast|default] [--verbose]
    usad leaderboard RUNS_DIR -o OUT_DIR

`usad hear run` joins the `hear` group that usad_upstream/hear.py creates (the library's
validate / embed / predict); `register` below attaches it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .taskdirs import model_options


def _scores(run_dir: Path) -> None:
    """The run's per-task scores, read as the leaderboard reads them."""
    from results.collect import collect, score_table

    if run_dir.is_dir():
        print(score_table(collect(run_dir)), flush=True)


def _superb_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .superb.recipes import get_recipe
    from .superb.runner import RecipeError, SuperbRun, run_superb

    steps = args.steps
    if args.quick and steps is None:
        steps = get_recipe(args.task).quick_steps
    run = SuperbRun(
        task=args.task, upstream=args.upstream, data=Path(args.data), runs_dir=Path(args.runs_dir),
        upstream_ckpt=Path(args.upstream_ckpt) if args.upstream_ckpt else None, name=args.name,
        device=args.device, steps=steps, workers=args.workers, override=args.override,
        feature_cache_mb=args.feature_cache_mb, trust_remote_code=args.trust_remote_code, verbose=args.verbose,
        evaluate_dev=args.evaluate_dev,
    )
    for seed in args.seed or [None]:
        seeded = replace(run, seed=seed)
        try:
            expdir = run_superb(seeded)
        except RecipeError:
            _scores(seeded.expdir)
            raise
        print(f"SUPERB {run.recipe.task} done: {expdir}")
        _scores(expdir)
    return 0


def _hear_run(args: argparse.Namespace) -> int:
    from .hear.runner import HearRun, HearRunError, run_hear

    options = model_options(args.model_options)
    run = HearRun(
        module=args.module, tasks_dir=Path(args.tasks_dir), model=Path(args.model) if args.model else None,
        runs_dir=Path(args.runs_dir), name=args.name, grid=args.grid, grid_points=args.grid_points, tasks=tuple(args.task or ()),
        model_options=options, trust_remote_code=args.trust_remote_code, verbose=args.verbose, seeds=tuple(args.seed or ()),
    )
    try:
        run_dir = run_hear(run)
    except HearRunError:
        _scores(run.run_dir)
        raise
    print(f"HEAR done: {run_dir}")
    _scores(run_dir)
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from results.collect import collect
    from results.published import load_published
    from results.render import render

    measured = collect(args.runs_dir)
    if measured.empty:
        print(f"warning: no SUPERB or HEAR runs (usad_run.json) under {args.runs_dir}; the tables hold published rows only",
              file=sys.stderr)
    paths = render(measured, load_published(which=args.published), args.output, title=args.title)
    n_gaps = int(measured["score"].isna().sum()) if not measured.empty else 0
    print(f"{len(measured)} measured rows ({n_gaps} gaps) -> " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_hear_run(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Attach `run` to the `usad hear` subcommand group."""
    from .hear.runner import GRIDS

    p = commands.add_parser("run", help="heareval embeddings + predictions over every task of a tasks dir")
    p.add_argument("--module", default="hear_api", help="HEAR API module (default: hear_api)")
    p.add_argument("--model", help="weights for the module's load_model (hear_api: a USAD .safetensors, a release "
                                   "snapshot directory or a hub id)")
    p.add_argument("--trust-remote-code", action="store_true", help="hear_api on a release: allow running its code")
    p.add_argument("--tasks-dir", required=True, help="folder of HEAR task directories")
    p.add_argument("--task", action="append", help="only this task directory (repeatable)")
    p.add_argument("--grid", choices=GRIDS, default="default", help="heareval's hyperparameter grid (default: default)")
    p.add_argument("--grid-points", type=int, default=8, help="points of the grid tried per task (heareval's default: 8)")
    p.add_argument("--model-options", default="{}", help="JSON kwargs for load_model, as heareval's option")
    p.add_argument("--runs-dir", default="runs", help="root of run directories (default: runs)")
    p.add_argument("--name", help="run name (default: the SUPERB name of the same checkpoint, e.g. usad-<checkpoint "
                                  "stem> for hear_api)")
    p.add_argument("--verbose", action="store_true", help="stream heareval's output (always in RUN_DIR/usad_hear.log)")
    p.add_argument("--seed", type=int, action="append", metavar="N",
                   help="seed of heareval's probes instead of its fixed 42 (repeatable: the embeddings are computed "
                        "once, each seed's predictions go to RUN/seed-N/)")
    p.set_defaults(func=_hear_run)


def _megabytes(text: str) -> float:
    from usad_upstream.upstream.cache import parse_megabytes  # imports s3prl: only when the flag is given

    try:
        return parse_megabytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from usad_upstream.cli import subcommands

    from .superb.recipes import RECIPES

    add_hear_run(subcommands(sub, "hear"))

    superb = sub.add_parser("superb", help="SUPERB tasks through s3prl's run_downstream")
    commands = superb.add_subparsers(dest="superb_command", required=True, metavar="SUPERB_COMMAND")
    p = commands.add_parser("run", help="train, pick the best dev checkpoint, test (finished stages are skipped)")
    p.add_argument("--task", required=True, type=str.upper, choices=[t.upper() for t in RECIPES],
                   metavar="{" + ",".join(RECIPES) + "}", help="SUPERB task (any case)")
    p.add_argument("--upstream", "-u", required=True, help="s3prl upstream name: usad, fbank, wavlm_local, ...")
    p.add_argument("--upstream-ckpt", "-k", help="upstream checkpoint (usad: a .safetensors student, a release "
                                                 "snapshot directory or a hub id such as MIT-SLS/USAD-Base)")
    p.add_argument("--trust-remote-code", action="store_true", help="usad on a release: allow running its code")
    p.add_argument("--data", required=True, help="dataset root for the task (layout: downstream_recipes/superb/recipes.py)")
    p.add_argument("--device", help="torch device for s3prl (default: cuda if available, else cpu)")
    p.add_argument("--name", help="run name (default: <upstream>-<checkpoint stem>, usad_local counting as usad)")
    p.add_argument("--verbose", action="store_true", help="stream s3prl's output (always in the run's usad_*.log files)")
    p.add_argument("--runs-dir", default="runs", help="root of run directories (default: runs)")
    p.add_argument("--steps", type=int, help="train this many steps instead of the SUPERB count (evals scale along)")
    p.add_argument("--quick", action="store_true", help="short CPU run: the task's quick step count (see recipes.py)")
    p.add_argument("--workers", type=int, help="dataloader workers (default: the config's)")
    p.add_argument("--override", "-o", help="extra s3prl -o overrides, e.g. config.optimizer.lr=1e-3")
    p.add_argument("--feature-cache-mb", type=_megabytes, default=0.0, metavar="MB",
                   help="usad / usad_teacher upstreams: compute each file's features once and keep up to MB "
                        "megabytes of them in memory (small corpora, frozen upstream; default 0: off)")
    p.add_argument("--seed", type=int, action="append", metavar="N",
                   help="run_downstream's --seed (its default: 1337); repeatable: one run per seed in NAME/seed-N/")
    p.add_argument("--evaluate-dev", action="store_true",
                   help="also evaluate the selected checkpoint on the dev split (per-item dev predictions in best-dev/)")
    p.set_defaults(func=_superb_run)

    p = sub.add_parser("leaderboard", help="collect SUPERB/HEAR runs into CSV, Markdown, HTML and PNG leaderboards")
    p.add_argument("runs_dir", help="directory searched for s3prl experiments and heareval outputs")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--published", choices=("paper", "all", "none"), default="paper",
                   help="published numbers to show: the USAD paper's tables (default), all, none")
    p.add_argument("--title", default="USAD leaderboard")
    p.set_defaults(func=_leaderboard)
