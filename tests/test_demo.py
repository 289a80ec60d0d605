"""The one long test (marked `demo`): `usad demo run --quick` (what `make demo QUICK=1` runs) end
to end in a temporary directory, then a rerun that must skip every finished stage; and how a
failing stage stops the pipeline."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from downstream_recipes.demo.pipeline import DECIDING, HEAREVAL_SEED, MODELS, QUICK, S3PRL_SEED
from results.intervals import INCONCLUSIVE, MET, MISSED
from results.items import hear_outcomes, superb_outcomes


def _demo(run_dir: Path, results: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "downstream_recipes.cli", "demo", "run", "--quick", "--run-dir", str(run_dir), "--results", str(results)]
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

    # the models a target compares ran QUICK.probe_seeds seeds, the others the tools' default one
    seeds = test_rows.groupby(["model", "benchmark", "task"])["seed"].apply(lambda s: sorted(s.dropna().astype(int)))
    for (model, benchmark, _), got in seeds.items():
        base = S3PRL_SEED if benchmark == "SUPERB" else HEAREVAL_SEED
        assert got == [base + k for k in range(QUICK.probe_seeds if model in DECIDING else 1)], (model, got)
    # every test score is given back by the per-item predictions the tools wrote (real files of
    # s3prl's ctc and speech_commands experts and of heareval's scene and event tasks)
    for row in test_rows[test_rows["score"].notna()].itertuples(index=False):
        found = (superb_outcomes(Path(row.run_path), row.task) if row.benchmark == "SUPERB" else hear_outcomes(Path(row.run_path)))
        assert found is not None and found.score == pytest.approx(row.score, abs=1e-3), row

    report = json.loads((results / "targets.json").read_text())
    verdicts = (MET, MISSED, INCONCLUSIVE, None)
    assert len(report["targets"]) == 3 and all(v in verdicts for v in report["targets"].values())
    assert {r["task"] for r in report["tasks"]} == set(QUICK.superb_steps) | set(QUICK.hear_tasks)
    for task in report["tasks"]:  # the seeds, the interval and the verdict of each task
        assert task["verdict"] in verdicts and task["seeds"] == [task["seeds"][0] + k for k in range(QUICK.probe_seeds)]
        assert task["ratio"]["low"] <= task["ratio"]["value"] <= task["ratio"]["high"]
    assert report["dev"]["split"] == "dev" and len(report["dev"]["tasks"]) == len(report["tasks"])
    summary = pd.read_csv(results / "leaderboard_summary.csv")
    student = summary[(summary["model"] == "usad_student") & (summary["split"] == "test")]
    assert set(student["resampled"]) <= {"seeds x items", "seeds x groups of items"}, student
    md = (results / "leaderboard.md").read_text()
    assert "## Targets" in md and "usad_student" in md
    for teacher, fmt in (("speech_teacher.ckpt", b"PK"), ("audio_teacher.ckpt", b"PK")):
        assert (run_dir / "models" / teacher).read_bytes()[:2] == fmt  # torch.save archives, original layouts
    # the student distils on every file of the pool and of the teachers' training audio (the
    # trainer names the files it skips as too short: spoken commands run from 0.5 s)
    assert "are shorter than" not in (run_dir / "logs" / "distill.log").read_text()

    first_times = json.loads((run_dir / "timings.json").read_text())
    cpu = first_times["stage CPU seconds"]
    assert set(cpu) == set(first_times["stage seconds"]) and all(cpu[s] > 0 for s in cpu), cpu
    assert first_times["machine"]["cpu"] and first_times["machine"]["torch"]

    second = _demo(run_dir, results)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "running" not in "\n".join(l for l in second.stdout.splitlines() if not l.startswith("[demo] leaderboard")), second.stdout
    assert second.stdout.count("already done") >= 5
    # the rerun keeps the times of the stages it skipped: those of the run that made the scores
    second_times = json.loads((run_dir / "timings.json").read_text())
    skipped = second_times["stages done by an earlier invocation"]
    assert set(skipped) == set(first_times["stage seconds"]) - {"leaderboard"}
    assert all(second_times["stage seconds"][s] == first_times["stage seconds"][s] > 0 for s in skipped)
    assert all(second_times["stage CPU seconds"][s] == cpu[s] for s in skipped)
    assert second_times["this invocation's seconds"] < first_times["this invocation's seconds"]


def _stages_demo(tmp_path: Path, jobs: int = 2):
    from downstream_recipes.demo.pipeline import Demo

    said: list[str] = []
    demo = Demo(tmp_path / "run", tmp_path / "results", jobs=jobs, log=said.append)
    for d in (demo.logs, demo.done):
        d.mkdir(parents=True)
    return demo, said


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.timeout(60)
def test_a_failing_stage_stops_the_pipeline_naming_stage_and_log(tmp_path: Path) -> None:
    from downstream_recipes.demo.pipeline import Stage, StageError

    demo, _ = _stages_demo(tmp_path)
    slow = Stage("hear-fbank", _py("import time; time.sleep(30)"), essential=False)
    broken = Stage("distill", _py("import sys; print('no teachers'); sys.exit(3)"))
    after = Stage("export", _py("pass"), needs=("distill",))
    began = time.time()
    with pytest.raises(StageError) as err:
        demo.run_stages([slow, broken, after])
    assert time.time() - began < 20  # the running evaluation was stopped, not waited for
    log = demo.logs / "distill.log"
    assert "'distill'" in str(err.value) and "exit status 3" in str(err.value) and str(log) in str(err.value)
    assert "no teachers" in log.read_text() and not demo.marker("distill").exists()
    assert not demo.marker("export").exists() and not demo.marker("hear-fbank").exists()


@pytest.mark.timeout(60)
def test_stages_start_when_their_needs_are_done_and_evaluation_failures_leave_gaps(tmp_path: Path) -> None:
    from downstream_recipes.demo.pipeline import Stage

    demo, said = _stages_demo(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    # "student" can only succeed after "teacher" wrote its file; "baseline" needs nothing and
    # runs beside "teacher"; "probe" fails, so "report" (which needs it) is skipped.
    stages = [
        Stage("teacher", _py(f"import time; time.sleep(1.5); open({str(out / 't')!r}, 'w').write('t')"), [out / "t"]),
        Stage("student", _py(f"print(open({str(out / 't')!r}).read())"), needs=("teacher",)),
        Stage("baseline", _py(f"import os, time; time.sleep(0.5); open({str(out / 'b')!r}, 'w').write(str(os.environ['OMP_NUM_THREADS']))"),
              essential=False),
        Stage("probe", _py("import sys; sys.exit(2)"), needs=("student",), essential=False),
        Stage("report", _py("pass"), needs=("probe",), essential=False),
    ]
    errors = demo.run_stages(stages)
    assert [e.split("'")[1] for e in errors] == ["probe", "report"] and "skipped" in errors[1]
    started = [line.split(":")[0].removeprefix("[demo] ") for line in said if "running" in line]
    assert started[:2] == ["teacher", "baseline"]  # side by side; "student" waited for "teacher"
    assert (out / "b").read_text() == "1"  # one CPU thread each when jobs > 1
    assert all(demo.marker(n).is_file() for n in ("teacher", "student", "baseline"))
    assert not demo.marker("probe").exists() and not demo.marker("report").exists()

    # A rerun skips what is done; rebuilding "teacher" reruns "student" and cleans its results.
    stale = tmp_path / "stale"
    stale.mkdir()
    stages[1].clean.append(stale)
    said.clear()
    demo.rebuilt.clear()
    demo.marker("teacher").unlink()
    demo.run_stages(stages[:3])
    started = [line.split(":")[0].removeprefix("[demo] ") for line in said if "running" in line]
    assert started == ["teacher", "student"] and not stale.exists()
    assert any(line.startswith("[demo] baseline: already done (took ") for line in said)
    assert demo.timings["baseline"] == demo.recorded_seconds("baseline") >= 0.5 and demo.reused == ["baseline"]


@pytest.mark.timeout(60)
def test_stages_needing_unknown_or_each_other_are_refused(tmp_path: Path) -> None:
    from downstream_recipes.demo.pipeline import Stage

    demo, _ = _stages_demo(tmp_path)
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['teachers'\]"):
        demo.run_stages([Stage("distill", _py("pass"), needs=("teachers",))])
    with pytest.raises(ValueError, match="wait on each other: \\['a', 'b'\\]"):
        demo.run_stages([Stage("a", _py("pass"), needs=("b",)), Stage("b", _py("pass"), needs=("a",))])


def test_full_suite_adds_the_six_tasks_for_the_same_models(tmp_path: Path) -> None:
    from downstream_recipes.demo.pipeline import BASE_CORPORA, BASELINES, FULL, SUITES, Demo

    def stages(name: str, **kw: object) -> dict:
        demo = Demo(tmp_path / name, tmp_path / "r", **kw)
        demo.models.mkdir(parents=True)  # stages() writes the teachers' spec files there
        return {s.name: s for s in demo.stages()}

    base, full = stages("a"), stages("b", suite="full")
    extra = set(full) - set(base)
    assert extra == {"corpora_full"} | {f"superb-{t}-{m}" for t in SUITES["full"] for m in DECIDING}
    evaluated = {s.rsplit("-", 1)[1] for s in base if s.startswith(("superb-", "hear-"))}
    assert evaluated == set(DECIDING)  # a full run evaluates the baselines only when asked
    assert {f"superb-{t}-{m}" for t in FULL.superb_steps for m in DECIDING} <= set(base)
    with_baselines = stages("d", models=MODELS)
    assert {f"{b}-{m}" for b in ("hear", "superb-PR") for m in BASELINES} <= set(with_baselines)
    # make demo builds only its own corpora; the extra ones come after the distillation's inputs
    assert base["corpora"].command[-2 * len(BASE_CORPORA):] == [a for s in BASE_CORPORA for a in ("--stage", s)]
    assert "corpora_full" not in full["distill"].needs and full["corpora_full"].needs == ("corpora",)
    names = list(full)
    assert names.index("corpora_full") > names.index("export")
    qbe, asr = full["superb-QbE-usad_student"], full["superb-ASR-speech_teacher"]
    assert "--override" not in qbe.command and qbe.command[qbe.command.index("--steps") + 1] == "0"
    assert "corpora_full" in qbe.needs and "export" in qbe.needs
    override = asr.command[asr.command.index("--override") + 1]
    assert "RNNs.dim=[256,256]" in override and "config.optimizer.lr=" in override
    with pytest.raises(ValueError, match="unknown demo suite"):
        Demo(tmp_path / "c", tmp_path / "r", suite="everything")


def test_projected_time_schedules_cpu_seconds_as_the_pipeline_does(tmp_path: Path) -> None:
    from downstream_recipes.demo.pipeline import Stage

    stages = [Stage("a", []), Stage("b", []), Stage("c", [], needs=("a",)), Stage("d", [], needs=("b", "c"))]
    seconds = {"a": 3.0, "b": 5.0, "c": 4.0, "d": 1.0}
    # two cores: a and b from 0, c from 3 (a done) to 7, d from 7 to 8
    assert _stages_demo(tmp_path / "two", jobs=2)[0].projected_seconds(stages, seconds) == 8.0
    # one core: a 0-3, then b (listed before c) 3-8, c 8-12, d 12-13
    assert _stages_demo(tmp_path / "one", jobs=1)[0].projected_seconds(stages, seconds) == 13.0
    assert _stages_demo(tmp_path / "gap", jobs=2)[0].projected_seconds(stages, {**seconds, "d": None}) is None


def test_emulated_cpu_experiments_and_model_subsets_reach_the_stages(tmp_path: Path) -> None:
    import yaml

    from downstream_recipes.demo.pipeline import EMULATED_CPUS, Demo, Stage

    demo = Demo(tmp_path / "run", tmp_path / "results", emulate_cpu="avx2", models=("usad_student",),
                distill_overrides=("teachers.speech.target=hidden_states",), evaluate_dev=True)
    for d in (demo.corpora, demo.models, demo.logs, demo.done):
        d.mkdir(parents=True)
    assert demo.distill_precision == "fp32" and demo.emulated == EMULATED_CPUS["avx2"]
    evals = [s for s in demo.stages() if s.name.startswith(("superb-", "hear-"))]
    assert {s.name.split("-")[-1] for s in evals} == {"usad_student"}
    assert all("--evaluate-dev" in s.command for s in evals if s.name.startswith("superb-"))
    # the stage's environment carries the capped instruction sets
    probe = Stage("probe", _py("import os; print(os.environ['ATEN_CPU_CAPABILITY'], os.environ['ONEDNN_MAX_CPU_ISA'])"))
    demo.run_stages([probe])
    assert (demo.logs / "probe.log").read_text().splitlines()[-1] == "avx2 AVX2"
    (demo.corpora / "pool").mkdir()
    (demo.corpora / "pool" / "manifest.tsv").write_text("path\tnum_samples\tsample_rate\tdomain\n")
    from unittest import mock

    with mock.patch("downstream_recipes.demo.pipeline.teacher_training_audio", return_value=demo.models / "seen.tsv"):
        config = yaml.safe_load(Demo(tmp_path / "run", tmp_path / "results", quick=True,
                                     distill_overrides=("teachers.speech.target=hidden_states",)).distill_config().read_text())
    assert config["teachers"]["speech"]["target"] == "hidden_states" and config["teachers"]["audio"]["target"] == "ffn"
    with pytest.raises(ValueError, match="unknown model"):
        Demo(tmp_path / "run", tmp_path / "results", models=("wavlm",))
    with pytest.raises(ValueError, match="--emulate-cpu"):
        Demo(tmp_path / "run", tmp_path / "results", emulate_cpu="sse")


def _targets_file(path: Path, cpu: str, verdict: str, emulated: "dict | None" = None, family: str = "") -> Path:
    ratio = {"value": 0.95, "low": 0.91 if verdict == "MET" else 0.85, "high": 1.01, "level": 0.95, "seeds": [1337, 1338, 1339]}
    record = {"settings": {"distill precision": "fp32" if emulated else "bf16", "invocation seconds": 1800.0,
                           "machine": {"cpu": cpu, "family": family, "model": "2" if family else "", "cores": 2, "isa flags": ["avx2", "avx512f", "avx512_bf16"],
                                       "emulated": emulated or {}, "torch": "2.13.0"}},
              "tasks": [{"benchmark": "SUPERB", "task": "IC", "rule": "student >= 0.9 x teacher", "ratio": ratio, "verdict": verdict}],
              "targets": {"speech: ...": verdict, "audio: ...": "MET"}}
    path.write_text(json.dumps(record))
    return path


def test_compare_puts_machines_side_by_side(tmp_path: Path) -> None:
    from downstream_recipes.demo.machines import compare, record_name

    a = _targets_file(tmp_path / "a.json", "AMD EPYC 9R14", "MET")
    b = _targets_file(tmp_path / "b.json", "AMD EPYC 9R14", "INCONCLUSIVE", emulated={"ATEN_CPU_CAPABILITY": "avx2"})
    settings = json.loads(b.read_text())["settings"]
    assert record_name(json.loads(a.read_text())["settings"]) == "amd-epyc-9r14-avx512-bf16"
    assert record_name(settings) == "amd-epyc-9r14-emulated-avx2-fp32"
    zen5 = json.loads(_targets_file(tmp_path / "z.json", "AMD EPYC", "MET", family="26").read_text())["settings"]
    assert record_name(zen5) == "amd-epyc-f26m2-avx512-bf16"  # generations apart where the name is not
    text = compare([a, b])
    assert "| speech: ... | MET | INCONCLUSIVE | differs between machines |" in text
    assert "| audio: ... | MET | MET | MET on every machine |" in text
    assert "| SUPERB IC | student >= 0.9 x teacher | 0.950 [0.910, 1.010] MET | 0.950 [0.850, 1.010] INCONCLUSIVE |" in text
    with pytest.raises(ValueError, match="not a demo targets file"):
        compare([a, _json_without_targets(tmp_path / "c.json")])
    with pytest.raises(ValueError, match="no targets files"):
        compare([])


def _json_without_targets(path: Path) -> Path:
    path.write_text(json.dumps({"tasks": []}))
    return path


@pytest.mark.timeout(60)
def test_a_resumed_run_starts_what_finished_stages_unblock_first(tmp_path: Path) -> None:
    from downstream_recipes.demo.pipeline import Stage

    demo, said = _stages_demo(tmp_path, jobs=1)
    teacher = Stage("teacher", _py("pass"))
    demo.run_stages([teacher])  # an earlier invocation trained the teacher
    said.clear()
    # "distill" is listed first but needs "teacher", which is only found done in this invocation;
    # it must still start before "baseline", which needs nothing
    demo.run_stages([teacher, Stage("distill", _py("pass"), needs=("teacher",)), Stage("baseline", _py("pass"))])
    started = [line.split(":")[0].removeprefix("[demo] ") for line in said if "running" in line]
    assert started == ["distill", "baseline"]


def test_repro_records_a_distillation_setting_this_cpu_cannot_run_and_measures_the_rest(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    from downstream_recipes.demo import repro

    def fake_run(cmd, env, log):  # type: ignore[no-untyped-def]
        out = Path(next(a for a in cmd if str(a).startswith("run_dir=")).split("=", 1)[1])
        if env.get("ATEN_CPU_CAPABILITY") == "avx2" and "train.precision=bf16" in cmd:
            log.write_text("Traceback ...\nRuntimeError: pack_vnni2 is only supported when avx512 is supported\n")
            raise ValueError("failed")
        out.mkdir(parents=True)
        (out / "metrics.csv").write_text("step,loss\n1,1.5\n2,1.25\n")
        log.write_text("ok\n")

    monkeypatch.setattr(repro, "_run", fake_run)
    monkeypatch.setattr(repro, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(repro, "_student_weights", lambda run_dir: {"w": np.ones(3, dtype=np.float32)})
    result = repro.measure_distillation(tmp_path, tmp_path, 2)
    assert result["vs default"]["ATen avx2"] == {"runs": False, "error": "RuntimeError: pack_vnni2 is only supported when avx512 is supported"}
    assert set(result["vs default"]) == {"default again", "2 threads", "ATen avx2", "fp32 (a CPU without bf16)", "emulated avx2 CPU, fp32"}
    assert result["vs default"]["2 threads"]["bitwise equal"] and result["default losses"] == [1.5, 1.25]


def test_runs_record_what_they_built_and_compare_tells_same_data_from_other_data(tmp_path: Path) -> None:
    from downstream_recipes.demo.machines import compare
    from downstream_recipes.demo.pipeline import data_fingerprints
    from results.manifest import checkpoint_hash

    run = tmp_path / "run"
    for rel, content in (("corpora/hear/a.wav", b"A"), ("corpora/hear/README.md", b"built in 3.2 s"), ("pool_small/p.flac", b"P"),
                         ("models/speech_teacher.ckpt", b"W")):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(content)
    first = data_fingerprints(run)
    assert set(first) == {"audio: corpora/hear", "audio: pool_small", "model: speech_teacher.ckpt"}
    assert first["model: speech_teacher.ckpt"] == checkpoint_hash(run / "models/speech_teacher.ckpt")
    (run / "corpora/hear/README.md").write_bytes(b"built in 4.0 s")  # datasheets carry build times: not the data
    assert data_fingerprints(run) == first
    (run / "corpora/hear/a.wav").write_bytes(b"A'")
    second = data_fingerprints(run)
    assert second["audio: corpora/hear"] != first["audio: corpora/hear"] and second["audio: pool_small"] == first["audio: pool_small"]
    files = []
    for name, prints in (("a", first), ("b", second)):
        path = _targets_file(tmp_path / f"{name}.json", "AMD EPYC 9R14", "MET")
        record = json.loads(path.read_text())
        record["settings"]["data and models (sha256)"] = prints
        path.write_text(json.dumps(record))
        files.append(path)
    text = compare(files)
    assert f"| audio: corpora/hear | {first['audio: corpora/hear']} | {second['audio: corpora/hear']} | differs |" in text
    assert f"| audio: pool_small | {first['audio: pool_small']} | {first['audio: pool_small']} | same |" in text
