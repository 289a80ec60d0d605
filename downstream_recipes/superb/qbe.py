"""SUPERB QbE through s3prl's own quesst14_dtw expert: nothing is trained, so the recipe's three
stages are
  train   every upstream layer (`-l 0..L-1`) on the dev queries: s3prl's `-m evaluate -t dev`
          writes benchmark.stdlist.xml, kept as dev_layer<l>.stdlist.xml and scored (MTWV ...)
  select  the layer with the best dev MTWV (the lowest on ties)
  test    that layer on the eval queries (`-t eval`), kept as eval.stdlist.xml and scored
Scores go to usad_train.log / usad_test.log as `dev mtwv: ...` / `test mtwv: ...` lines, which
the leaderboard reads like any s3prl expert's. A rerun skips the layers already scored.

`python -m downstream_recipes.superb.qbe layers -u NAME [-k CKPT]` prints how many feature
layers s3prl's Featurizer would see for an upstream (the recipe asks before the search).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import quesst_score

if TYPE_CHECKING:
    from .runner import SuperbRun, _Stages

STDLIST = "benchmark.stdlist.xml"


def groundtruth(data: Path, split: str) -> Path:
    return Path(data) / "scoring" / f"groundtruth_quesst14_{split}"


def layer_count(run: "SuperbRun", env: dict[str, str]) -> int:
    cmd = [run.python, "-m", "downstream_recipes.superb.qbe", "layers", "-u", run.upstream]
    if run.upstream_ckpt:
        cmd += ["-k", str(Path(run.upstream_ckpt).resolve())]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.split()
    if proc.returncode != 0 or not lines or not lines[-1].isdigit():
        from .runner import RecipeError

        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RecipeError(f"SUPERB QbE: could not count the layers of upstream {run.upstream!r}: {tail}")
    return int(lines[-1])


def _append(log: Path, text: str) -> None:
    with log.open("a") as handle:
        handle.write(text)
    sys.stdout.write(text)


def run_qbe(run: "SuperbRun", stages: "_Stages", stage: Callable[[str, list[list[str]], Path], None],
            base: list[str], env: dict[str, str], train_log: Path, test_log: Path) -> None:
    """`base`: the s3prl command up to the split and layer (-m evaluate -u ... -c ... -p ... -o ...)."""
    expdir = run.expdir
    dev_truth = quesst_score.read_groundtruth(groundtruth(run.data, "dev"))
    eval_truth = quesst_score.read_groundtruth(groundtruth(run.data, "eval"))

    stage_name = {"dev": "train", "eval": "test"}

    def search(split: str, layer: int, log: Path, keep: Path) -> quesst_score.QbeScores:
        if not keep.is_file():
            stage(stage_name[split], [[*base, "-t", split, "-l", str(layer)]], log)
            shutil.move(str(expdir / STDLIST), keep)
        return quesst_score.score(quesst_score.read_stdlist(keep), dev_truth if split == "dev" else eval_truth)

    if stages.status("train") != "done":
        layers = layer_count(run, env)
        dev = {}
        for layer in range(layers):
            result = search("dev", layer, train_log, expdir / f"dev_layer{layer}.stdlist.xml")
            dev[layer] = result.mtwv
            _append(train_log, f"[QbE] layer {layer} of {layers}:\n" + quesst_score.report(result, "dev"))
        stages.set("train", "done", layers=layers, dev_mtwv=dev)

    if stages.status("select") != "done":
        dev = {int(k): v for k, v in stages.manifest["stages"]["train"]["dev_mtwv"].items()}
        best = max(dev, key=lambda k: (dev[k], -k))
        stages.set("select", "done", layer=best, checkpoints=[])

    if stages.status("test") != "done":
        layer = stages.manifest["stages"]["select"]["layer"]
        test_log.unlink(missing_ok=True)
        (expdir / "eval.stdlist.xml").unlink(missing_ok=True)
        result = search("eval", layer, test_log, expdir / "eval.stdlist.xml")
        _append(test_log, f"[QbE] layer {layer} (best on dev):\n" + quesst_score.report(result, "test"))
        dev_score = stages.manifest["stages"]["train"]["dev_mtwv"]
        stages.set("test", "done", score=result.mtwv, dev_score=max(float(v) for v in dev_score.values()))


def _layers(args: argparse.Namespace) -> int:
    """How many hidden states s3prl's Featurizer would see (it treats a single one as one layer)."""
    import torch

    from usad_upstream.compat import patch_s3prl

    patch_s3prl()
    from usad_upstream.upstream import register_s3prl_upstreams

    register_s3prl_upstreams()
    from s3prl import hub

    if not hasattr(hub, args.upstream):
        print(f"qbe layers: error: s3prl knows no upstream {args.upstream!r}", file=sys.stderr)
        return 2
    model = getattr(hub, args.upstream)(ckpt=args.upstream_ckpt, model_config=None, refresh=False).eval()
    with torch.no_grad():
        hidden = model([torch.zeros(16000)])["hidden_states"]
    print(len(hidden) if isinstance(hidden, (list, tuple)) else 1)
    return 0


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m downstream_recipes.superb.qbe")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("layers", help="print the number of feature layers of an s3prl upstream")
    p.add_argument("-u", "--upstream", required=True)
    p.add_argument("-k", "--upstream-ckpt")
    args = parser.parse_args(argv)
    return _layers(args)


if __name__ == "__main__":
    sys.exit(main())
