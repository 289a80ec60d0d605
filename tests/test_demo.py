"""The one long test (marked `demo`): `usad demo run --quick` (what `make demo QUICK=1` runs) end
to end in a temporary directory, then a rerun that must skip every finished stage; and how a
failing stage stops the pipeline."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from downstream_recipes.demo.pipeline import MODELS, QUICK


def _demo(run_dir: Path, results: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "usad_upstream.cli", "demo", "run", "--quick", "--run-dir", str(run_dir), "--results", str(results)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


@pytest.mark.demo
@pytest.mark.timeout(1500)
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    run_dir, results = tmp_path / "run", tmp_path / "leaderboard"
    first = _demo(run_dir, results)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard.csv", "leaderboard.png", "targets.json"):
        assert (results / name).stat().st_size > 0, name

    # every model x task cell is measured or shown as a gap (a row with a status and no score)
    tidy = pd.read_csv(results / "leaderboard.csv")
    test_rows = tidy[tidy["split"] == "test"]
    cells = {(m, b, t) for m, b, t in test_rows[["model", "benchmark", "task"]].itertuples(index=False)}
    expected = {(m, "SUPERB", t) for m in MODELS for t in QUICK.superb_steps} | {(m, "HEAR", t) for m in MODELS for t in QUICK.hear_tasks}
    assert expected <= cells, sorted(expected - cells)
    gaps = test_rows[test_rows["score"].isna()]
    assert gaps["status"].fillna("").str.len().gt(0).all(), gaps

    report = json.loads((results / "targets.json").read_text())
    assert len(report["targets"]) == 3 and all(v in (True, False, None) for v in report["targets"].values())
    assert {r["task"] for r in report["tasks"]} == set(QUICK.superb_steps) | set(QUICK.hear_tasks)
    md = (results / "leaderboard.md").read_text()
    assert "## Targets" in md and "usad_student" in md
    for teacher, fmt in (("speech_teacher.ckpt", b"PK"), ("audio_teacher.ckpt", b"PK")):
        assert (run_dir / "models" / teacher).read_bytes()[:2] == fmt  # torch.save archives, original layouts

    second = _demo(run_dir, results)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "running" not in "\n".join(l for l in second.stdout.splitlines() if not l.startswith("[demo] leaderboard")), second.stdout
    assert second.stdout.count("already done") >= 5


@pytest.mark.timeout(60)
def test_a_failing_stage_stops_the_pipeline_naming_stage_and_log(tmp_path: Path) -> None:
    from downstream_recipes.demo.pipeline import Demo, Stage, StageError

    demo = Demo(tmp_path / "run", tmp_path / "results", log=lambda _: None)
    for d in (demo.logs, demo.done):
        d.mkdir(parents=True)
    broken = Stage("distill", [sys.executable, "-c", "import sys; print('no teachers'); sys.exit(3)"])
    with pytest.raises(StageError) as err:
        demo.run_serial(broken)
    log = demo.logs / "distill.log"
    assert "'distill'" in str(err.value) and "exit status 3" in str(err.value) and str(log) in str(err.value)
    assert "no teachers" in log.read_text() and not demo.marker("distill").exists()
    ok = Stage("export", [sys.executable, "-c", "pass"])
    demo.run_serial(ok)
    assert demo.marker("export").is_file()
