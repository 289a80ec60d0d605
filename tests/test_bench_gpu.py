"""The prepared GPU script: its summary arithmetic, and every stage of it run end to end on tiny
models on the CPU (`run_gpu.sh --smoke`). The end-to-end test is the heavy one (~1-2 min on two
quiet cores): a GPU lease is 15 minutes, and a typo found there costs one."""
import json
import os
import subprocess
import sys
from pathlib import Path

from usad_upstream.bench_gpu import summary

ROOT = Path(__file__).resolve().parents[1]


def test_summary_takes_the_ratios_and_mfu_from_one_run():
    rows = [
        {"model": "usad_base", "batch": 32, "audio_s_per_s": 6000.0, "mfu": 0.2},
        {"model": "usad_base[flex]", "batch": 32, "audio_s_per_s": 9000.0, "mfu": 0.31},
        {"model": "wavlm_base_plus", "batch": 32, "audio_s_per_s": 5000.0},
        {"model": "wavlm_base_plus[bf16]", "batch": 32, "audio_s_per_s": 6000.0},
        {"model": "wavlm+atst", "batch": 32, "audio_s_per_s": 4000.0},
        {"model": "usad_base", "batch": 8, "audio_s_per_s": 99999.0},  # another batch: ignored
    ]
    suite = {"student": "usad_base", "big_batch": 32, "stages": {
        "variants": {"result": {"throughput": rows}},
        "distill": {"result": [{"variant": "eager", "batch": 32, "mfu": 0.26},
                               {"variant": "eager, cached targets", "batch": 32, "mfu": 0.3}]},
        "modes": {"result": [{"mode": "eager (autocast)", "batch": 1, "seconds": 0.012},
                             {"mode": "cudagraph", "batch": 1, "seconds": 0.010}, {"mode": "compile", "batch": 1, "error": "x"}]},
    }}
    out = summary(suite)
    assert out["variants, batch 32: best usad_base[flex] / default wavlm_base_plus"]["value"] == 1.8
    assert out["variants, batch 32: best usad_base[flex] / best wavlm_base_plus[bf16]"]["value"] == 1.5
    assert out["variants, batch 32: best usad_base[flex] / default wavlm+atst"] == {"value": 2.25, "target": 2.0}
    assert out["variants, batch 32: inference MFU (usad_base[flex])"]["value"] == 0.31
    assert out["distillation step, batch 32: MFU (eager)"] == {"value": 0.26, "target": 0.25}
    assert out["distillation step, batch 32: MFU (eager, cached targets)"] == {"value": 0.3, "target": 0.35}
    assert out["batch 1: default eager (autocast) time over the best mode's (cudagraph) - 1"]["value"] == 0.2


def test_the_gpu_script_runs_every_stage_on_tiny_models(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(["bash", str(ROOT / "results" / "bench" / "run_gpu.sh"), "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert suite["smoke"] and suite["student"] == "usad_tiny"
    for name, stage in suite["stages"].items():
        assert "error" not in stage, (name, stage.get("traceback"))
        if "skipped" in stage:  # on a CPU only what needs CUDA (or compile time) is left out
            assert name in {"cudnn_benchmark", "profile", "distill_compiled"}, name
    for name in ("modes", "distill", "attention"):  # rows that record a failure instead of raising
        assert not [r for r in suite["stages"][name]["result"] if "error" in r], name
    assert not suite["stages"]["variants"]["result"]["failed"]
    variants = {r["model"] for r in suite["stages"]["variants"]["result"]["throughput"]}
    assert {"usad_tiny[flex]", "usad_tiny[bf16,flex]", "wavlm_base_plus[bf16,fftconv,flexattn]", "atst_frame[bf16]"} <= variants
    assert [r["variant"] for r in suite["stages"]["distill"]["result"]][-1] == "eager, cached targets"
    assert {r["kernel"] for r in suite["stages"]["attention"]["result"]} == {"blocked", "aligned", "flex"}
    assert any(key.startswith("table, batch 4: best usad_tiny") for key in suite["summary"])
    assert "| target | measured | target |" in (tmp_path / "suite.md").read_text()


def test_a_model_that_fails_on_this_device_is_recorded_and_the_rest_measured(tmp_path):
    from usad_upstream.bench import markdown_table, run_bench

    record = run_bench(models=["usad_tiny", "usad_tiny[cudnn]"], batches=[1], clip_seconds=0.5, lengths=[], distill_sizes=[],
                       repeats=1, threads=1, workdir=tmp_path, hear_minutes=0, fbank_batch=0, attention_kernels=(),
                       fresh_process_memory=False, drop_failing=True)
    assert [r["model"] for r in record["throughput"]] == ["usad_tiny"]
    assert "usad_tiny[cudnn]" in record["failed"]  # no cuDNN attention on a CPU
    assert "- usad_tiny[cudnn]: failed (" in markdown_table(record)
