"""The GPU measurement of issue 23 in one process: `usad bench --gpu-suite` (results/bench/run_gpu.sh).

Stages, most important first, each recorded as it finishes (a stage that fails records its
error and the next one runs; stages that would start after `budget_s` are skipped):
fbank (batched vs per-item loop), table (USAD vs the teachers at batch 1 / 8 / 32, model-FLOP
MFU), distill (eager step, bf16 teachers, cached targets), modes (batch 1 / 8: eager,
torch.compile, CUDA graph), variants (attention kernels, bf16 weights, the teachers' FFT conv and
FlexAttention at batch 32, in one run with the references), attention (copies per kernel),
cudnn_benchmark (A/B), profile (the step's device time by operator class), distill_compiled.
`smoke=True` runs the same code on tiny models (on a CPU: what needs CUDA is skipped) so the
suite cannot fail on the GPU for a trivial reason. Writes suite.json and suite.md into out_dir.
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import torch

from .bench import (
    _autocast, _device_name, _inputs, _teacher, _usad, attention_report, best_time, fbank_report, markdown_table,
    measure_distill, run_bench,
)

# Issue 23's targets (batch 32 x 10 s, bf16, ratios from one run).
TARGETS = {"usad_base/wavlm_base_plus": 1.5, "usad_base/wavlm+atst": 2.0, "inference_mfu": 0.30,
           "distill_mfu": 0.25, "cached_targets_mfu": 0.35, "small_batch_gap": 0.20}


def cuda_graph_runner(model: torch.nn.Module, wavs: torch.Tensor, lens: torch.Tensor) -> Callable[[], object]:
    """USAD on a fixed, unpadded batch with the encoder (everything after the fbank) replayed as
    one CUDA graph: the fbank runs eagerly, its output is copied into the graph's input. Frame
    counts live on the CPU, so the encoder's length checks need no device sync during capture."""
    from .frontend import batch_fbank

    feats, frame_lens = batch_fbank(wavs, lens)
    static, cpu_lens = feats.clone(), frame_lens.cpu()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            model.encode(static, cpu_lens)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model.encode(static, cpu_lens)

    def run() -> object:
        static.copy_(batch_fbank(wavs, lens)[0])
        graph.replay()
        return out

    return run


def inference_modes(size: str, batches: Sequence[int], clip_seconds: float, dev: torch.device, repeats: int,
                    modes: Sequence[str]) -> list[dict]:
    """USAD with bf16 weights (no autocast) at small batches: eager, torch.compile (dynamic=False),
    CUDA graph of the encoder; plus the default (autocast) model's eager time for comparison."""
    default = _usad(size, dev)
    contender = _usad(size, dev, ("bf16",))
    model = contender.run.model  # type: ignore[attr-defined]
    compiled = torch.compile(contender.run, dynamic=False) if "compile" in modes else None
    rows = []
    for batch in batches:
        wavs, lens = _inputs(batch, clip_seconds, dev)
        runs: dict[str, Callable[[], object]] = {"eager (autocast)": lambda: default.run(wavs, lens),
                                                 "eager": lambda: contender.run(wavs, lens)}
        if compiled is not None:
            runs["compile"] = lambda: compiled(wavs, lens)
        for name, run in runs.items():
            rows.append(_timed_mode(f"usad_{size}", name, batch, clip_seconds, lambda run=run: run, dev, repeats))
        if "cudagraph" in modes:
            def graphed() -> Callable[[], object]:
                with torch.autocast(dev.type, enabled=False):
                    return cuda_graph_runner(model, wavs, lens)
            rows.append(_timed_mode(f"usad_{size}", "cudagraph", batch, clip_seconds, graphed, dev, repeats))
    return rows


def _timed_mode(model: str, mode: str, batch: int, clip_seconds: float, build: Callable[[], Callable[[], object]],
                dev: torch.device, repeats: int) -> dict:
    row = {"model": model, "mode": mode, "batch": batch, "clip_s": clip_seconds}
    try:
        with torch.inference_mode(), _autocast(dev):
            run = build()
            seconds = best_time(run, repeats, dev)
        row.update(seconds=seconds, audio_s_per_s=batch * clip_seconds / seconds)
    except Exception as exc:  # one mode failing (e.g. a capture error) must not hide the others
        row["error"] = _error(exc)
    return row


OP_CLASSES = (("convolution", ("conv",)), ("copy", ("copy_",)), ("attention", ("scaled_dot_product", "attention", "flex")),
              ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")))


def kernel_profile(step: Callable[[], object], dev: torch.device, steps: int = 3) -> dict:
    """Device time of `steps` calls by operator class (self time of ATen operators, so nothing is
    counted twice), and the top-40 table."""
    from torch.profiler import ProfilerActivity, profile

    step()
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(e.self_device_time_total for e in events if e.key.startswith("aten::"))
    shares = {name: 0.0 for name, _ in OP_CLASSES}
    for e in events:
        if not e.key.startswith("aten::"):
            continue
        for name, needles in OP_CLASSES:
            if any(n in e.key for n in needles):
                shares[name] += e.self_device_time_total
                break
    return {"device_ms_per_step": total / steps / 1e3, "shares": {k: v / max(total, 1) for k, v in shares.items()},
            "table": events.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=80)}


def _error(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return (lines[-1].strip() if lines else repr(exc))[:500]


def summary(suite: dict) -> dict:
    """Measured value vs target for each of the issue's targets, from the recorded stages."""
    out: dict[str, dict] = {}
    stages = suite["stages"]
    big = suite["big_batch"]

    def result(name: str) -> "dict | list | None":
        return stages.get(name, {}).get("result")

    for stage in ("table", "variants"):
        record = result(stage)
        if not record:
            continue
        for key in ("usad_base/wavlm_base_plus", "usad_base/wavlm+atst"):
            speed = {r["model"]: r["audio_s_per_s"] for r in record["throughput"] if r["batch"] == big}
            ref = key.split("/")[1]
            students = {m: v for m, v in speed.items() if m.split("[")[0] == suite["student"]}
            refs = {m: v for m, v in speed.items() if m.split("[")[0] == ref}
            if students and refs:
                best_student, best_ref = max(students, key=students.get), max(refs, key=refs.get)
                label = f"{stage}, batch {big}: best {best_student} / "
                out[label + f"default {ref}"] = {"value": round(students[best_student] / speed.get(ref, refs[best_ref]), 3),
                                                 "target": TARGETS[key]}
                out[label + f"best {best_ref}"] = {"value": round(students[best_student] / refs[best_ref], 3), "target": TARGETS[key]}
        mfus = [(r["mfu"], r["model"]) for r in record["throughput"]
                if r["batch"] == big and "mfu" in r and r["model"].split("[")[0] == suite["student"]]
        if mfus:
            value, name = max(mfus)
            out[f"{stage}, batch {big}: inference MFU ({name})"] = {"value": round(value, 4), "target": TARGETS["inference_mfu"]}
    for row in [*(result("distill") or []), *(result("distill_compiled") or [])]:
        if row.get("mfu") is not None:
            target = TARGETS["cached_targets_mfu" if "cached" in row["variant"] else "distill_mfu"]
            out[f"distillation step, batch {row['batch']}: MFU ({row['variant']})"] = {"value": round(row["mfu"], 4), "target": target}
    modes = [r for r in result("modes") or [] if "seconds" in r]
    for batch in sorted({r["batch"] for r in modes}):
        times = {r["mode"]: r["seconds"] for r in modes if r["batch"] == batch}
        if "eager (autocast)" in times and len(times) > 1:
            best = min(times, key=times.get)
            gap = times["eager (autocast)"] / times[best] - 1
            out[f"batch {batch}: default eager (autocast) time over the best mode's ({best}) - 1"] = {
                "value": round(gap, 3), "target": f"<= {TARGETS['small_batch_gap']}"}
    return out


def suite_markdown(suite: dict) -> str:
    lines = [f"# GPU suite: {suite['device']}, torch {suite['torch']}, {suite['date']}" + (" (SMOKE: tiny models)" if suite["smoke"] else ""), ""]
    lines += ["| target | measured | target |", "|---|---|---|"]
    lines += [f"| {k} | {v['value']} | {v['target']} |" for k, v in suite["summary"].items()]
    for name, stage in suite["stages"].items():
        lines += ["", f"## {name} ({stage.get('seconds', 0):.0f} s)"]
        if "error" in stage or "skipped" in stage:
            lines.append(f"{'error' if 'error' in stage else 'skipped'}: {stage.get('error') or stage.get('skipped')}")
            continue
        result = stage["result"]
        if isinstance(result, dict) and "throughput" in result:
            lines.append(markdown_table(result))
        elif isinstance(result, dict) and "table" in result:
            lines.append(json.dumps(result["shares"]) + f", {result['device_ms_per_step']:.1f} ms device time per step")
            lines += ["```", result["table"], "```"]
        else:
            lines += ["```", json.dumps(result, indent=1), "```"]
    return "\n".join(lines) + "\n"


def gpu_suite(device: str, out_dir: "str | Path", peak_tflops: "float | None", smoke: bool = False,
              budget_s: float = 540.0, threads: int = 8, workdir: "str | Path | None" = None,
              cpu_compile: bool = False, only: "Sequence[str] | None" = None) -> dict:
    """Run every stage (see the module docstring; `only` names a subset) and return the suite
    record; suite.json and suite.md in out_dir are rewritten after each stage."""
    import datetime as dt
    import tempfile

    from .checkpoint import atomic_write

    dev = torch.device(device)
    torch.set_num_threads(threads)
    on_gpu = dev.type == "cuda"
    start = time.monotonic()
    out_dir = Path(out_dir)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="usad-gpu-suite-"))
    size, small, teacher_size = ("tiny", "tiny", "tiny") if smoke else ("base", "small", "base")
    seconds, batches = (1.0, (1, 2, 4)) if smoke else (10.0, (1, 8, 32))
    big, repeats = batches[-1], (1 if smoke else 5)
    compile_ok = on_gpu or cpu_compile
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # the means of the issue; A/B in its own stage
    student = f"usad_{size}"
    suite: dict = {"device": _device_name(dev), "torch": torch.__version__, "date": dt.date.today().isoformat(),
                   "smoke": smoke, "peak_tflops": peak_tflops, "student": student, "big_batch": big, "stages": {}, "summary": {}}
    common = dict(clip_seconds=seconds, lengths=(), distill_sizes=(), hear_minutes=0, repeats=repeats, threads=threads,
                  device=device, workdir=workdir, teacher_size=teacher_size, fbank_batch=0, attention_kernels=(),
                  peak_tflops=peak_tflops, fresh_process_memory=False, drop_failing=True)
    teachers: dict = {}

    def pair(options: Sequence[str] = ()) -> dict:
        key = tuple(options)
        if key not in teachers:
            teachers[key] = {"wavlm": _teacher("wavlm", workdir, dev, options, teacher_size),
                             "atst": _teacher("atst_frame", workdir, dev, options, teacher_size)}
        return teachers[key]

    def cudnn_ab() -> list[dict]:
        rows = []
        for flag in (False, True):
            torch.backends.cudnn.benchmark = flag
            record = run_bench(models=[student, "wavlm_base_plus[bf16]"], batches=(big,), **common)
            rows += [{"cudnn_benchmark": flag, "model": r["model"], "audio_s_per_s": r["audio_s_per_s"]} for r in record["throughput"]]
        return rows

    def distill() -> list[dict]:
        def row(options: Sequence[str], label: str, **kwargs: object) -> dict:
            try:
                return measure_distill(size, pair(options), dev, big, seconds, repeats, peak_tflops, label=label,
                                       reference_teachers=pair(), **kwargs)
            except Exception as exc:  # one configuration failing must not hide the others
                return {"variant": label, "batch": big, "error": _error(exc)}

        return [row((), "eager"), row(("bf16",), "eager, bf16 teachers"),
                row(("bf16", "fftconv", "flexattn"), "eager, bf16 teachers + FFT conv + FlexAttention"),
                row((), "eager, cached targets", cached_targets=True)]

    def profile() -> dict:
        from .bench import distill_step

        step = distill_step(size, pair(("bf16",)), dev)
        wavs, lens = _inputs(big, seconds, dev)
        return kernel_profile(lambda: step(wavs, lens), dev)

    kernels = ("blocked", "aligned", "cudnn", "flex") if on_gpu else ("blocked", "aligned", "flex")
    variants = [student, f"{student}[cudnn]" if on_gpu else f"{student}[blocked]", f"{student}[flex]", f"{student}[bf16]",
                f"{student}[bf16,flex]", "wavlm_base_plus", "wavlm_base_plus[bf16]", "wavlm_base_plus[bf16,fftconv]",
                "wavlm_base_plus[bf16,flexattn]", "wavlm_base_plus[bf16,fftconv,flexattn]", "atst_frame", "atst_frame[bf16]",
                "wavlm+atst", "wavlm+atst[bf16]", "wavlm+atst[bf16,fftconv,flexattn]"]
    stages: list[tuple[str, Callable[[], object], bool]] = [  # by importance: later ones may meet the budget
        ("fbank", lambda: fbank_report(16, seconds, dev, repeats), True),
        ("table", lambda: run_bench(models=list(dict.fromkeys([f"usad_{small}", student, "wavlm_base_plus", "atst_frame",
                                                               "wavlm+atst"])), batches=batches, **common), True),
        ("distill", distill, True),
        ("modes", lambda: inference_modes(size, batches[:2], seconds, dev, repeats,
                                          ("compile",) * compile_ok + ("cudagraph",) * on_gpu), True),
        ("variants", lambda: run_bench(models=variants, batches=(big,), **common), True),
        ("attention", lambda: attention_report(size, min(8, big), seconds, dev, kernels, repeats), True),
        ("cudnn_benchmark", cudnn_ab, on_gpu),
        ("profile", profile, on_gpu),
        ("distill_compiled", lambda: [measure_distill(size, pair(("bf16",)), dev, big, seconds, repeats, peak_tflops,
                                                      compile_student=True, label="compiled, bf16 teachers",
                                                      reference_teachers=pair())], compile_ok),
    ]
    unknown = sorted(set(only or ()) - {name for name, _, _ in stages})
    if unknown:
        raise ValueError(f"unknown gpu-suite stage(s) {unknown}; stages: {[name for name, _, _ in stages]}")
    for name, run, enabled in stages:
        began = time.monotonic()
        if only and name not in only:
            suite["stages"][name] = {"skipped": "not among the stages asked for"}
        elif not enabled:
            suite["stages"][name] = {"skipped": "needs CUDA (or cpu_compile)"}
        elif began - start > budget_s:
            suite["stages"][name] = {"skipped": f"time budget of {budget_s:.0f} s spent"}
        else:
            print(f"[gpu-suite] {name} ...", flush=True)
            try:
                suite["stages"][name] = {"result": run()}
            except Exception as exc:  # record and go on: later stages still measure
                suite["stages"][name] = {"error": _error(exc), "traceback": traceback.format_exc()[-3000:]}
            suite["stages"][name]["seconds"] = time.monotonic() - began
            print(f"[gpu-suite] {name}: {'error ' + suite['stages'][name]['error'] if 'error' in suite['stages'][name] else 'done'}"
                  f" in {suite['stages'][name]['seconds']:.0f} s", flush=True)
        suite["summary"] = summary(suite)
        text = json.dumps(suite, indent=1, default=str) + "\n"
        atomic_write(out_dir / "suite.json", lambda tmp: Path(tmp).write_text(text))
        markdown = suite_markdown(suite)
        atomic_write(out_dir / "suite.md", lambda tmp: Path(tmp).write_text(markdown))
    profile_result = suite["stages"].get("profile", {}).get("result")
    if profile_result:
        atomic_write(out_dir / "profile.txt", lambda tmp: Path(tmp).write_text(profile_result["table"] + "\n"))
    return suite
