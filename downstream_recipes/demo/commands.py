"""`usad demo run` (what `make demo` calls) and `usad demo teacher` (one of its stages)."""
from __future__ import annotations

import argparse
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from .pipeline import MODELS

    if args.baselines and args.model:
        raise ValueError("--baselines evaluates all five models; with --model name each model instead")
    if args.recipe == "usad2":
        from .usad2 import Usad2Demo as Demo
    else:
        from .pipeline import Demo

    suffix = ("-usad2" if args.recipe == "usad2" else "") + ("-quick" if args.quick else "")
    run_dir = Path(args.run_dir or f"runs/demo{suffix}")
    if args.recipe == "usad2" and args.suite != "demo":
        raise ValueError("--suite full runs with --recipe usad only (the usad2 demo evaluates its own tasks)")
    tag = "" if args.suite == "demo" else f"-{args.suite}"  # a full suite never overwrites make demo's board
    results = Path(args.results or (run_dir / f"leaderboard{tag}" if args.quick else f"results/demo{suffix}{tag}"))
    paths = Demo(run_dir, results, quick=args.quick, force=args.force, jobs=args.jobs, suite=args.suite,
                 emulate_cpu=args.emulate_cpu, distill_overrides=tuple(args.distill_override or ()),
                 models=MODELS if args.baselines else tuple(args.model or ()), evaluate_dev=args.evaluate_dev)()
    print("leaderboard: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .machines import MACHINES_DIR, compare

    paths = [Path(p) for p in args.targets] or sorted((Path(args.results) / MACHINES_DIR).glob("*.json"))
    text = compare(paths)
    out = Path(args.output or Path(args.results) / "machines.md")
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0


def _repro(args: argparse.Namespace) -> int:
    from .repro import run_repro

    return run_repro(args)


def _teacher(args: argparse.Namespace) -> int:
    import json
    import logging

    import torch

    from .teachers import TRAINERS, TeacherBudget

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    budget = TeacherBudget(steps=args.steps, batch=args.batch, lr=args.lr)
    report = TRAINERS[args.kind](Path(args.corpora), Path(args.output), budget, seed=args.seed, progress=lambda m: print(m, flush=True))
    Path(str(args.output) + ".json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output} ({report['format']}); trained on {report['tasks']}")
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    demo = sub.add_parser("demo", help="USAD in miniature: corpora, two teachers, a distilled student, SUPERB+HEAR leaderboard")
    inner = demo.add_subparsers(dest="demo_command", required=True, metavar="ACTION")
    p = inner.add_parser("run", help="run (or resume) the whole demo; finished stages are skipped")
    p.add_argument("--quick", action="store_true", help="the <= 10 min version (fewer steps, fewer HEAR tasks)")
    p.add_argument("--force", action="store_true", help="delete the run directory first and rebuild everything")
    p.add_argument("--run-dir", help="work directory (default: runs/demo, runs/demo-quick; usad2: runs/demo-usad2[-quick])")
    p.add_argument("--results", help="leaderboard directory (default: results/demo or results/demo-usad2; with --quick, RUN_DIR/leaderboard)")
    p.add_argument("--recipe", choices=["usad", "usad2"], default="usad",
                   help="usad: two teachers, one student (make demo); usad2: speech, sound and music teachers, "
                   "students with and without domain-aware weighting (default: usad)")
    p.add_argument("--suite", choices=["demo", "full"], default="demo",
                   help="demo: PR/KS/SID/IC + HEAR (make demo); full: also ER, ASR, SD, SF, ASV, QbE for the same models "
                        "(leaderboard in results/demo-full)")
    p.add_argument("--jobs", type=int, default=2, help="stages run side by side, one CPU thread each (default 2; 1: one at a time, all threads)")
    p.add_argument("--emulate-cpu", choices=["avx2"], help="run as a CPU without AVX-512 would: ATen, oneDNN and MKL "
                   "capped at AVX2 and the distillation in fp32 (a stand-in for a second machine)")
    p.add_argument("--distill-override", action="append", metavar="KEY=VALUE",
                   help="an experiment on the recipe: a dotted override of the distillation config "
                        "(e.g. teachers.speech.target=hidden_states; repeatable; recorded in the results)")
    p.add_argument("--model", action="append", help="evaluate only this model (repeatable; default: the models that "
                   "decide a target, speech_teacher audio_teacher usad_student; QUICK: all five)")
    p.add_argument("--baselines", action="store_true", help="also evaluate fbank and the concatenated teachers "
                   "(context only, 1 probe seed each; ~7 min more on 2 cores)")
    p.add_argument("--evaluate-dev", action="store_true",
                   help="SUPERB probes also predict the dev split with their selected checkpoint (per-item dev intervals)")
    p.set_defaults(func=_run)
    p = inner.add_parser("compare", help="the verdicts of full runs on several machines side by side")
    p.add_argument("targets", nargs="*", help="targets files (default: RESULTS/machines/*.json, one per machine)")
    p.add_argument("--results", default="results/demo", help="the demo's results folder (default: results/demo)")
    p.add_argument("-o", "--output", help="markdown file to write (default: RESULTS/machines.md)")
    p.set_defaults(func=_compare)
    p = inner.add_parser("repro", help="measure which parts of the demo are bitwise reproducible (needs a finished run)")
    p.add_argument("--run-dir", default="runs/demo", help="a finished demo run (default: runs/demo)")
    p.add_argument("--work", help="scratch folder (default: RUN_DIR/repro)")
    p.add_argument("--files", type=int, default=8, help="speech and music test files each for the features (default 8)")
    p.add_argument("--distill-steps", type=int, default=3, help="distillation steps per setting (default 3)")
    p.add_argument("--part", dest="parts", action="append", choices=["features", "distillation", "probes"],
                   help="only this part (repeatable; default: all)")
    p.add_argument("-o", "--output", default="results/demo/reproducibility.json")
    p.set_defaults(func=_repro)
    p = inner.add_parser("teacher", help="train one small domain teacher on training splits (a demo stage)")
    p.add_argument("kind", choices=["speech", "audio", "sound", "music"],
                   help="speech or audio (make demo's two teachers); sound or music (the usad2 recipe's)")
    p.add_argument("--corpora", required=True, help="folder written by `usad corpora build`")
    p.add_argument("-o", "--output", required=True, help="checkpoint path (.pt for speech, .ckpt for audio)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch", type=int, required=True, help="clips per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.set_defaults(func=_teacher)
