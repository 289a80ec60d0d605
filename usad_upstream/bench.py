"""`usad bench`: USAD vs its teachers and peers, side by side in one process on the same inputs.

Weights do not change speed, so every model is randomly initialised; the teachers are written
in their original on-disk formats and loaded through the real loaders. Results go to
results/bench/<device>-<date>.json plus a Markdown table; ratios are computed within the run.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

SAMPLE_RATE = 16000
LONG_WINDOW_S = 30  # waveform models without their own chunking run long input in 30 s windows

Runner = Callable[[torch.Tensor, torch.Tensor], object]


@dataclass
class Contender:
    name: str
    run: Runner
    parameters: int


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: CPU peak memory needs Linux")


def _trim_heap() -> None:
    """Return glibc's free heap memory to the OS once (unlike mallopt, no lasting slowdown)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


class PeakMemory:
    """Peak memory while the block runs, above the level at entry: CUDA's allocator peak, or on
    CPU the kernel's RSS high-water mark (VmHWM, reset at entry through /proc/self/clear_refs).

    Use it in a fresh process (see `in_fresh_process`): glibc keeps freed blocks for reuse, so in
    a process that already ran other models the RSS peak says more about them than about the block.
    (Forcing glibc to return memory instead, with mallopt, made every model 20-40% slower.)
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self.baseline = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            _trim_heap()  # freed memory held since loading (e.g. checkpoint copies) would hide the block's peak
            self.baseline = _rss_bytes()
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _peak_rss_bytes()  # the high-water mark is never below the current RSS

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def _windowed(run: Runner, window_s: int = LONG_WINDOW_S) -> Runner:
    """Run a model without built-in chunking over consecutive windows of the input."""
    window = window_s * SAMPLE_RATE

    def go(wavs: torch.Tensor, lens: torch.Tensor) -> object:
        if wavs.shape[1] <= window:
            return run(wavs, lens)
        outs = []
        for start in range(0, wavs.shape[1], window):
            piece = wavs[:, start : start + window]
            if piece.shape[1] >= 400:
                outs.append(run(piece, (lens - start).clamp(400, piece.shape[1])))
        return outs

    return go


def _usad(size: str, device: torch.device) -> Contender:
    from .model import build_model

    model = build_model(size).to(device).eval()
    return Contender(f"usad_{size}", lambda w, n: model(w, n), model.num_parameters())


def _release(size: str, workdir: Path, device: torch.device) -> Contender:
    """The release backend (a release's own code behind our wrapper) on a stand-in snapshot of
    `size` (usad_upstream/release/standin: our reading of the release's code, not the real one)."""
    from .release import load_encoder
    from .release.fixtures import write_standin_snapshot

    directory = workdir / f"release_standin_{size}"
    if not (directory / "model.safetensors").exists():
        write_standin_snapshot(directory, size=size)
    encoder = load_encoder(str(directory), trust_remote_code=True).to(device)
    return Contender(f"release_{size}", lambda w, n: encoder(w, n), encoder.num_parameters())


def _teacher_files(workdir: Path) -> dict[str, Path]:
    from .teachers.fixtures import write_atst_checkpoint, write_wavlm_checkpoint

    files = {"wavlm": workdir / "WavLM-Base+.pt", "atst_frame": workdir / "atstframe_base.ckpt"}
    if not files["wavlm"].exists():
        write_wavlm_checkpoint(files["wavlm"])
    if not files["atst_frame"].exists():
        write_atst_checkpoint(files["atst_frame"])
    return files


def _teacher(kind: str, workdir: Path, device: torch.device):  # type: ignore[no-untyped-def]
    from .teachers import build_teacher

    return build_teacher({"kind": kind, "path": str(_teacher_files(workdir)[kind])}).to(device)


def _distilhubert(device: torch.device) -> Contender:
    from .compat import patch_s3prl

    patch_s3prl()
    from s3prl.upstream.distiller.model import DistillerConfig, DistillerModel

    # DistilHuBERT: HuBERT's CNN, 2 transformer layers of 768, 3 prediction heads.
    model = DistillerModel(DistillerConfig({"encoder_layers": 2, "n_tasks": 3, "final_dim": 768})).to(device).eval()

    def run(wavs: torch.Tensor, lens: torch.Tensor) -> object:
        pad = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lens[:, None]
        return model(wavs, pad, get_hidden=True)

    return Contender("distilhubert", _windowed(run), sum(p.numel() for p in model.parameters()))


def build_contenders(names: Sequence[str], workdir: Path, device: torch.device) -> list[Contender]:
    """Instantiate the requested models; 'wavlm+atst' runs both teachers on the same batch."""
    out = []
    teachers: dict[str, torch.nn.Module] = {}

    def teacher(kind: str) -> torch.nn.Module:
        if kind not in teachers:
            teachers[kind] = _teacher(kind, workdir, device)
        return teachers[kind]

    def params(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    for name in names:
        if name.startswith("usad_"):
            out.append(_usad(name.removeprefix("usad_"), device))
        elif name.startswith("release_"):
            out.append(_release(name.removeprefix("release_"), workdir, device))
        elif name == "wavlm_base_plus":
            wavlm = teacher("wavlm")
            out.append(Contender(name, _windowed(wavlm), params(wavlm)))
        elif name == "atst_frame":
            atst = teacher("atst_frame")
            out.append(Contender(name, atst, params(atst)))
        elif name == "wavlm+atst":
            wavlm, atst = teacher("wavlm"), teacher("atst_frame")
            out.append(Contender(name, lambda w, n, a=_windowed(wavlm), b=atst: (a(w, n), b(w, n)), params(wavlm) + params(atst)))
        elif name == "distilhubert":
            out.append(_distilhubert(device))
        else:
            raise ValueError(f"unknown benchmark model {name!r}; choose from {sorted(DEFAULT_MODELS)}")
    return out


DEFAULT_MODELS = ("usad_small", "usad_base", "usad_large", "release_base", "wavlm_base_plus", "atst_frame", "wavlm+atst",
                  "distilhubert")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best-of-N wall time after one warm-up call; the minimum is the least noisy estimate."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _autocast(device: torch.device):  # type: ignore[no-untyped-def]
    """bf16 autocast on CUDA; fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def time_call(run: Runner, wavs: torch.Tensor, lens: torch.Tensor, repeats: int, device: torch.device) -> float:
    """Inference timing: inference mode, bf16 autocast on CUDA."""
    with torch.inference_mode(), _autocast(device):
        return best_time(lambda: run(wavs, lens), repeats, device)


def run_once_measured(name: str, batch: int, seconds: float, threads: int, device: str, workdir: str) -> dict:
    """Meant for a fresh process: build one contender, warm it up on 1 s of audio, then time one
    call on batch x seconds and record its peak memory."""
    dev = torch.device(device)
    torch.set_num_threads(threads)
    (contender,) = build_contenders([name], Path(workdir), dev)
    warm, (wavs, lens) = _inputs(1, 1.0, dev), _inputs(batch, seconds, dev)
    with torch.inference_mode(), _autocast(dev):
        contender.run(*warm)
        with PeakMemory(dev) as mem:
            _sync(dev)
            start = time.perf_counter()
            contender.run(wavs, lens)
            _sync(dev)
            took = time.perf_counter() - start
    return {"seconds": took, "peak_mem_mb": round(mem.extra_mb, 1)}


def hear_long_input(checkpoint: str, minutes: float, threads: int) -> dict:
    """Meant for a fresh process: `minutes` of audio through hear_api.get_timestamp_embeddings
    on CPU; the process's whole peak RSS, imports and weights included (what a HEAR run needs)."""
    import hear_api

    torch.set_num_threads(threads)
    model = hear_api.load_model(checkpoint)
    audio = 0.1 * torch.randn(1, int(minutes * 60 * SAMPLE_RATE), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    embeddings, _ = hear_api.get_timestamp_embeddings(audio, model)
    return {"checkpoint": Path(checkpoint).name, "minutes": minutes, "seconds": time.perf_counter() - start,
            "frames": embeddings.shape[1], "peak_rss_mb": round(_peak_rss_bytes() / 2**20, 1)}


def _call(fn: Callable[..., dict], *args: object) -> dict:
    return fn(*args)


def in_fresh_process(fn: Callable[..., dict], *args: object) -> dict:
    """Run fn(*args) in a new interpreter (spawn), so that its memory peak is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def distill_step(
    size: str, teachers: dict, device: torch.device, compile_student: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One training step of the real trainer pieces: both teachers (inference mode), the student
    and heads forward + backward (bf16 autocast on GPU, teachers included), AdamW update;
    `compile_student` wraps student + heads in torch.compile."""
    from .distill.objective import DistillObjective, TeacherSpec
    from .distill.trainer import Distiller, student_frames, teacher_targets
    from .model import build_model

    student = build_model(size).to(device)
    specs = [TeacherSpec(n, t.num_layers, t.dim, float(t.frame_rate)) for n, t in teachers.items()]
    objective = DistillObjective(student.config.dim, student.config.layers, specs).to(device)
    distiller = Distiller(student, objective, torch.bfloat16 if device.type == "cuda" else None).train()
    model = torch.compile(distiller) if compile_student else distiller
    optimizer = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.98), eps=1e-6)

    def step(wavs: torch.Tensor, lens: torch.Tensor) -> float:
        targets = teacher_targets(teachers, objective, wavs, lens, distiller.autocast_dtype)
        normalizer = objective.frame_counts(student_frames(lens), targets)
        loss = model(wavs, lens, targets, normalizer).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(distiller.parameters(), 10.0)
        optimizer.step()
        return float(loss.detach())

    return step


def count_flops(step: Callable[[torch.Tensor, torch.Tensor], float], wavs: torch.Tensor, lens: torch.Tensor) -> int:
    """FLOPs of one step (forward, backward, teachers) by torch's own FLOP counter (matmuls/convs/SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(wavs, lens)
    return counter.get_total_flops()


def _inputs(batch: int, seconds: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    wavs = (0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=gen)).to(device)
    return wavs, torch.full((batch,), wavs.shape[1], dtype=torch.long, device=device)


def run_bench(
    models: Sequence[str] = DEFAULT_MODELS,
    batches: Sequence[int] = (1, 8),
    clip_seconds: float = 10.0,
    lengths: Sequence[float] = (1, 10, 60, 300, 1200),
    sweep_models: Sequence[str] = ("usad_small", "usad_base", "wavlm_base_plus", "atst_frame"),
    distill_sizes: Sequence[str] = ("base",),
    distill_batches: Sequence[int] = (2,),
    compile_student: bool = False,
    peak_tflops: "float | None" = None,
    repeats: int = 3,
    threads: int = 2,
    device: str = "cpu",
    workdir: "Path | None" = None,
    hear_minutes: float = 20.0,
    hear_size: str = "base",
) -> dict:
    """Measure inference throughput (s of audio / s), peak memory, time vs length, the
    distillation step throughput (student + both teachers) and the peak memory of `hear_minutes`
    through hear_api (0 skips it); returns the record. CPU memory is measured in fresh processes
    (RSS has no reset); CUDA memory in this one, from the allocator's peak statistics."""
    dev = torch.device(device)
    measure = in_fresh_process if dev.type == "cpu" else _call
    torch.set_num_threads(threads)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="usad-bench-"))
    contenders = build_contenders(models, workdir, dev)
    rows = []
    for batch in batches:
        wavs, lens = _inputs(batch, clip_seconds, dev)
        for c in tqdm(contenders, desc=f"batch {batch} x {clip_seconds:g} s", unit="model"):
            seconds = time_call(c.run, wavs, lens, repeats, dev)
            memory = measure(run_once_measured, c.name, batch, clip_seconds, threads, device, str(workdir))
            rows.append({"model": c.name, "params": c.parameters, "batch": batch, "clip_s": clip_seconds,
                         "seconds": seconds, "audio_s_per_s": batch * clip_seconds / seconds,
                         "peak_mem_mb": memory["peak_mem_mb"]})
    sweep = []
    for c in contenders:
        if c.name not in sweep_models:
            continue
        for seconds in tqdm(lengths, desc=f"length sweep {c.name}", unit="len"):
            took = measure(run_once_measured, c.name, 1, seconds, threads, device, str(workdir))
            sweep.append({"model": c.name, "input_s": seconds, **took})
    hear = []
    if hear_minutes:
        from .checkpoint import save_checkpoint
        from .model import build_model

        checkpoint = workdir / f"usad_{hear_size}.safetensors"
        if not checkpoint.exists():
            save_checkpoint(build_model(hear_size), checkpoint)
        hear.append(in_fresh_process(hear_long_input, str(checkpoint), hear_minutes, threads))
    training = []
    if distill_sizes:
        teachers = {"wavlm": _teacher("wavlm", workdir, dev), "atst": _teacher("atst_frame", workdir, dev)}
    for size in distill_sizes:
        step = distill_step(size, teachers, dev, compile_student)
        eager = distill_step(size, teachers, dev) if compile_student else step  # same FLOPs, countable
        for batch in distill_batches:
            wavs, lens = _inputs(batch, clip_seconds, dev)
            took = best_time(lambda: step(wavs, lens), repeats, dev)
            flops = count_flops(eager, wavs, lens)
            training.append({"student": f"usad_{size}", "teachers": "wavlm_base_plus+atst_frame", "batch": batch,
                             "clip_s": clip_seconds, "compiled": compile_student, "seconds": took,
                             "audio_s_per_s": batch * clip_seconds / took, "tflop_per_step": flops / 1e12,
                             "achieved_tflops": flops / took / 1e12,
                             "mfu": flops / took / (peak_tflops * 1e12) if peak_tflops else None})
    record = {
        "device": _device_name(dev), "date": dt.date.today().isoformat(), "threads": threads,
        "torch": torch.__version__, "throughput": rows, "length_sweep": sweep, "distill_step": training,
        "hear_long_input": hear, "ratios": headline_ratios(rows),
    }
    return record


def headline_ratios(rows: Sequence[dict]) -> dict[str, float]:
    """Speed-ups of each model over WavLM Base+ and over the two teachers together, per batch."""
    out = {}
    for batch in sorted({r["batch"] for r in rows}):
        speed = {r["model"]: r["audio_s_per_s"] for r in rows if r["batch"] == batch}
        for ref in ("wavlm_base_plus", "wavlm+atst"):
            if ref not in speed:
                continue
            for name, value in speed.items():
                if name != ref:
                    out[f"b{batch}:{name}/{ref}"] = round(value / speed[ref], 3)
    return out


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev).replace(" ", "-")
    return f"cpu-{platform.machine()}-{os.cpu_count()}core"


def markdown_table(record: dict) -> str:
    """The README table: throughput per model and batch, with the ratios against the teachers."""
    lines = [f"Device: {record['device']}, {record['threads']} threads, torch {record['torch']}, {record['date']}", "",
             "| model | params (M) | batch | audio s / s | x WavLM Base+ | x WavLM+ATST | peak mem (MB) |",
             "|---|---|---|---|---|---|---|"]
    ratios = record["ratios"]

    def ratio(row: dict, ref: str) -> str:
        if row["model"] == ref:
            return "1.00"
        value = ratios.get(f"b{row['batch']}:{row['model']}/{ref}")
        return "-" if value is None else f"{value:.2f}"

    for r in record["throughput"]:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f} | {r['batch']} x {r['clip_s']:g} s | {r['audio_s_per_s']:.1f} | "
            f"{ratio(r, 'wavlm_base_plus')} | {ratio(r, 'wavlm+atst')} | {r['peak_mem_mb']:.0f} |"
        )
    if record["distill_step"]:
        lines += ["", "| distillation step | teachers | batch | compiled | audio s / s | TFLOP/s | MFU |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {d['student']} | {d['teachers']} | {d['batch']} x {d['clip_s']:g} s | {'yes' if d.get('compiled') else 'no'} | {d['audio_s_per_s']:.2f} | "
                  f"{d['achieved_tflops']:.3f} | {'-' if d['mfu'] is None else format(d['mfu'], '.1%')} |"
                  for d in record["distill_step"]]
    if record.get("hear_long_input"):
        lines += ["", "| hear_api.get_timestamp_embeddings (CPU) | minutes | seconds | frames | peak RSS of the process (MB) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {h['checkpoint']} | {h['minutes']:g} | {h['seconds']:.1f} | {h['frames']} | {h['peak_rss_mb']:.0f} |"
                  for h in record["hear_long_input"]]
    if record["length_sweep"]:
        lines += ["", "| model | input length (s) | seconds | peak mem (MB) |", "|---|---|---|---|"]
        lines += [f"| {s['model']} | {s['input_s']:g} | {s['seconds']:.2f} | {s['peak_mem_mb']:.0f} |" for s in record["length_sweep"]]
    return "\n".join(lines) + "\n"


def write_record(record: dict, out_dir: "str | os.PathLike[str]") -> tuple[Path, Path]:
    """results/bench/<device>-<date>.json and .md, written atomically."""
    from .checkpoint import atomic_write

    stem = Path(out_dir) / f"{record['device']}-{record['date']}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    atomic_write(md_path, lambda tmp: Path(tmp).write_text(markdown_table(record)))
    return json_path, md_path


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _command(args) -> int:  # type: ignore[no-untyped-def]
    record = run_bench(
        models=args.models.split(","), batches=[int(b) for b in args.batches.split(",")],
        clip_seconds=args.clip_seconds, lengths=_floats(args.lengths), sweep_models=args.sweep_models.split(","),
        distill_sizes=[x for x in args.distill_sizes.split(",") if x], distill_batches=[int(b) for b in args.distill_batches.split(",")],
        compile_student=args.compile,
        peak_tflops=args.peak_tflops, hear_minutes=args.hear_minutes, hear_size=args.hear_size,
        repeats=args.repeats, threads=args.threads, workdir=args.workdir,
        device=("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device,
    )
    json_path, md_path = write_record(record, args.out)
    print(markdown_table(record))
    print(f"wrote {json_path} and {md_path}")
    return 0


def register(sub) -> None:  # type: ignore[no-untyped-def]
    p = sub.add_parser("bench", help="throughput / memory of USAD vs WavLM Base+, ATST-Frame, DistilHuBERT")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--lengths", default="1,10,60,300,1200", help="input lengths (s) of the time-vs-length sweep")
    p.add_argument("--sweep-models", default="usad_small,usad_base,wavlm_base_plus,atst_frame")
    p.add_argument("--distill-sizes", default="base", help="students for the distillation-step measurement ('' skips it)")
    p.add_argument("--distill-batches", default="2", help="clips per distillation step, one measurement each")
    p.add_argument("--compile", action="store_true", help="torch.compile the student + heads of the distillation step")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 peak for MFU, e.g. 989 for an H100 SXM")
    p.add_argument("--hear-minutes", type=float, default=20.0,
                   help="minutes of audio through hear_api.get_timestamp_embeddings on CPU, for its peak memory (0 skips)")
    p.add_argument("--hear-size", default="base", help="USAD preset of that measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    p.add_argument("--workdir", default=None, help="where the random teacher checkpoints are written (reused)")
    p.add_argument("--out", default="results/bench")
    p.set_defaults(func=_command)
