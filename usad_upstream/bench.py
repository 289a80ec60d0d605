"""`usad bench`: USAD vs its teachers and peers, side by side in one process on the same inputs.

Weights do not change speed, so every model is randomly initialised; the teachers are written
in their original on-disk formats and loaded through the real loaders. Results go to
results/bench/<device>-<date>.json plus a Markdown table; ratios are computed within the run.

A model name may carry implementation options in brackets (same model, same FLOPs): USAD's
attention kernel and bf16 weights (`usad_base[flex]`, `usad_base[bf16,cudnn]`), the teachers'
bf16 weights, FFT positional conv and FlexAttention (`wavlm_base_plus[bf16,fftconv,flexattn]`,
`atst_frame[bf16]`, `wavlm+atst[bf16]`). `--gpu-suite` runs the whole GPU measurement
(results/bench/run_gpu.sh); `--smoke` runs the same logic on tiny models.
"""
from __future__ import annotations

import contextlib
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
    base: str = ""  # the name without [options]: the model whose FLOPs this is


# Implementation options a model name may carry in brackets, per model family.
USAD_OPTIONS = ("blocked", "aligned", "cudnn", "flex", "bf16")
TEACHER_OPTIONS = {"wavlm": ("bf16", "fftconv", "flexattn"), "atst_frame": ("bf16",)}


def parse_variant(name: str) -> tuple[str, tuple[str, ...]]:
    """'wavlm_base_plus[bf16,fftconv]' -> ('wavlm_base_plus', ('bf16', 'fftconv'))."""
    if "[" not in name:
        return name, ()
    if not name.endswith("]"):
        raise ValueError(f"benchmark model {name!r}: options go in brackets at the end, e.g. usad_base[flex]")
    base, options = name[:-1].split("[", 1)
    return base, tuple(o for o in options.split(",") if o)


def _check_options(name: str, options: Sequence[str], allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"benchmark model {name!r}: unknown option(s) {unknown}; allowed: {list(allowed)}")
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


def _usad(size: str, device: torch.device, options: Sequence[str] = ()) -> Contender:
    """USAD with the attention kernel (default: auto) and, with 'bf16', bf16 weights and no autocast."""
    from .attention import KERNELS, RelPositionSelfAttention
    from .model import build_model

    name = f"usad_{size}" + (f"[{','.join(options)}]" if options else "")
    _check_options(name, options, USAD_OPTIONS)
    model = build_model(size).to(device).eval()
    kernels = [o for o in options if o in KERNELS]
    for module in model.modules():
        if isinstance(module, RelPositionSelfAttention):
            module.kernel = kernels[-1] if kernels else "auto"
    if "bf16" in options:
        model.to(torch.bfloat16)

    def run(wavs: torch.Tensor, lens: torch.Tensor) -> object:
        with torch.autocast(wavs.device.type, enabled=False) if "bf16" in options else contextlib.nullcontext():
            return model(wavs, lens)

    run.model = model  # type: ignore[attr-defined]  (count_flops counts its attention on the model path)
    return Contender(name, run, model.num_parameters(), f"usad_{size}")


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


# Teacher checkpoint sizes: the released Base models, or tiny ones for --smoke.
TEACHER_SIZES = {
    "base": ({}, {}),
    "tiny": ({"encoder_layers": 4, "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4,
              "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"}, {"dim": 64, "depth": 4}),
}


def _teacher_files(workdir: Path, teacher_size: str = "base") -> dict[str, Path]:
    from .teachers.fixtures import write_atst_checkpoint, write_wavlm_checkpoint

    wavlm_cfg, atst_cfg = TEACHER_SIZES[teacher_size]
    files = {"wavlm": workdir / "WavLM-Base+.pt", "atst_frame": workdir / "atstframe_base.ckpt"}
    if not files["wavlm"].exists():
        write_wavlm_checkpoint(files["wavlm"], **wavlm_cfg)
    if not files["atst_frame"].exists():
        write_atst_checkpoint(files["atst_frame"], **atst_cfg)
    return files


def _teacher(kind: str, workdir: Path, device: torch.device, options: Sequence[str] = (), teacher_size: str = "base"):  # type: ignore[no-untyped-def]
    """A teacher from its original file format, with implementation options (TEACHER_OPTIONS)."""
    from .teachers import build_teacher

    options = [o for o in options if o in TEACHER_OPTIONS[kind]]
    teacher = build_teacher({"kind": kind, "path": str(_teacher_files(workdir, teacher_size)[kind])}).to(device)
    if "fftconv" in options:
        teacher.use_fft_pos_conv()
    if "flexattn" in options:
        teacher.use_flex_attention()
    if "bf16" in options:
        teacher.cast_frozen(torch.bfloat16)
    return teacher


def _distilhubert(device: torch.device) -> Contender:
    from .compat import patch_s3prl

    patch_s3prl()
    from s3prl.upstream.distiller.model import DistillerConfig, DistillerModel

    # DistilHuBERT: HuBERT's CNN, 2 transformer layers of 768, 3 prediction heads.
    model = DistillerModel(DistillerConfig({"encoder_layers": 2, "n_tasks": 3, "final_dim": 768})).to(device).eval()

    def run(wavs: torch.Tensor, lens: torch.Tensor) -> object:
        pad = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lens[:, None]
        return model(wavs, pad, get_hidden=True)

    return Contender("distilhubert", _windowed(run), sum(p.numel() for p in model.parameters()), "distilhubert")


def build_contenders(names: Sequence[str], workdir: Path, device: torch.device, teacher_size: str = "base") -> list[Contender]:
    """Instantiate the requested models; 'wavlm+atst' runs both teachers on the same batch."""
    out = []
    teachers: dict[tuple, torch.nn.Module] = {}

    def teacher(kind: str, options: Sequence[str]) -> torch.nn.Module:
        key = (kind, tuple(sorted(o for o in options if o in TEACHER_OPTIONS[kind])))
        if key not in teachers:
            teachers[key] = _teacher(kind, workdir, device, key[1], teacher_size)
        return teachers[key]

    def params(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    for name in names:
        base, options = parse_variant(name)
        if base.startswith("usad_"):
            out.append(_usad(base.removeprefix("usad_"), device, options))
        elif base.startswith("release_") and not options:
            out.append(_release(base.removeprefix("release_"), workdir, device))
        elif base == "wavlm_base_plus":
            _check_options(name, options, TEACHER_OPTIONS["wavlm"])
            wavlm = teacher("wavlm", options)
            out.append(Contender(name, _windowed(wavlm), params(wavlm), base))
        elif base == "atst_frame":
            _check_options(name, options, TEACHER_OPTIONS["atst_frame"])
            atst = teacher("atst_frame", options)
            out.append(Contender(name, atst, params(atst), base))
        elif base == "wavlm+atst":
            _check_options(name, options, TEACHER_OPTIONS["wavlm"])
            wavlm, atst = teacher("wavlm", options), teacher("atst_frame", options)
            out.append(Contender(name, lambda w, n, a=_windowed(wavlm), b=atst: (a(w, n), b(w, n)), params(wavlm) + params(atst), base))
        elif base == "distilhubert" and not options:
            out.append(_distilhubert(device))
        else:
            raise ValueError(f"unknown benchmark model {name!r}; choose from {sorted(DEFAULT_MODELS)} (options in brackets)")
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


def measure_call(run: Runner, warm: tuple, wavs: torch.Tensor, lens: torch.Tensor, dev: torch.device) -> dict:
    """One warm-up call on `warm`, then one timed call on (wavs, lens) with its peak memory."""
    with torch.inference_mode(), _autocast(dev):
        run(*warm)
        with PeakMemory(dev) as mem:
            _sync(dev)
            start = time.perf_counter()
            run(wavs, lens)
            _sync(dev)
            took = time.perf_counter() - start
    return {"seconds": took, "peak_mem_mb": round(mem.extra_mb, 1)}


def run_once_measured(name: str, batch: int, seconds: float, threads: int, device: str, workdir: str) -> dict:
    """Meant for a fresh process: build one contender, warm it up on 1 s of audio, then time one
    call on batch x seconds and record its peak memory."""
    dev = torch.device(device)
    torch.set_num_threads(threads)
    (contender,) = build_contenders([name], Path(workdir), dev)
    return measure_call(contender.run, _inputs(1, 1.0, dev), *_inputs(batch, seconds, dev), dev)


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


def in_fresh_process(fn: Callable[..., dict], *args: object) -> dict:
    """Run fn(*args) in a new interpreter (spawn), so that its memory peak is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def distill_step(
    size: str, teachers: dict, device: torch.device, compile_student: bool = False, kernel: str = "auto",
    cached_targets: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One training step of the real trainer pieces: both teachers (inference mode), the student
    and heads forward + backward (bf16 autocast on GPU, teachers included), AdamW update;
    `compile_student` wraps student + heads in torch.compile, `kernel` is the student's attention
    kernel, and `cached_targets` computes each batch's teacher targets once (the first call) and
    reuses them: the step of a run that reads targets from the offline cache (student + heads)."""
    from .attention import RelPositionSelfAttention
    from .distill.objective import DistillObjective, TeacherSpec
    from .distill.trainer import Distiller, student_frames, teacher_targets
    from .model import build_model

    student = build_model(size).to(device)
    for module in student.modules():
        if isinstance(module, RelPositionSelfAttention):
            module.kernel = kernel
    specs = [TeacherSpec(n, t.num_layers, t.dim, float(t.frame_rate)) for n, t in teachers.items()]
    objective = DistillObjective(student.config.dim, student.config.layers, specs, student_rate=float(student.config.frame_rate)).to(device)
    distiller = Distiller(student, objective, torch.bfloat16 if device.type == "cuda" else None).train()
    model = torch.compile(distiller) if compile_student else distiller
    optimizer = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    cache: dict[tuple, dict] = {}

    def step(wavs: torch.Tensor, lens: torch.Tensor) -> float:
        key = (wavs.data_ptr(), tuple(wavs.shape), lens.data_ptr())
        if cached_targets and key in cache:
            targets = cache[key]
        else:
            targets = teacher_targets(teachers, objective, wavs, lens, distiller.autocast_dtype)
            if cached_targets:
                cache[key] = targets
        normalizer = objective.frame_counts(student_frames(lens, student.config.time_stride), targets)
        loss = model(wavs, lens, targets, normalizer).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(distiller.parameters(), 10.0)
        optimizer.step()
        return float(loss.detach())

    step.student = student  # type: ignore[attr-defined]  (count_flops counts its attention on the model path)
    return step


def count_flops(step: Callable[..., object], wavs: torch.Tensor, lens: torch.Tensor,
                model: "torch.nn.Module | None" = None) -> int:
    """FLOPs of one call (forward, backward, teachers) by torch's own FLOP counter (matmuls/convs/SDPA).

    Model FLOPs: USAD's attention in `model` is counted on the blocked bias path (what the model
    needs; the aligned GPU path multiplies twice as many position scores, FlexAttention is not
    counted at all), so the MFU of every kernel is measured against the same work."""
    from torch.utils.flop_counter import FlopCounterMode

    from .attention import attention_kernel

    with attention_kernel(model, "blocked") if model is not None else contextlib.nullcontext():
        with FlopCounterMode(display=False) as counter:
            step(wavs, lens)
    return counter.get_total_flops()


class OperatorCounter:
    """Counts the ATen operators a block dispatches: `with OperatorCounter() as ops: ...`, then
    `ops.total`, `ops.launches` (the non-view ones: on a GPU each is a kernel launch or a sync)
    and `ops.by_name`."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                name = str(func.overloadpacket)
                counter.by_name[name] = counter.by_name.get(name, 0) + 1
                counter.views += func.is_view
                return func(*args, **(kwargs or {}))

        self.by_name: dict[str, int] = {}
        self.views = 0
        self._mode = _Mode()

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    @property
    def launches(self) -> int:
        return self.total - self.views

    def __enter__(self) -> "OperatorCounter":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


_PROFILER_DTYPE_BYTES = {"float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2, "long int": 8, "int": 4,
                         "bool": 1, "unsigned char": 1, "c10::complex<float>": 8, "c10::complex<double>": 16}


def copy_profile(fn: Callable[[], object], large_numel: int) -> dict:
    """Every aten::copy_ (slice writes, casts, contiguous, pads, cat all end in one) that `fn`
    runs, from torch.profiler: count and MB written, and the same for copies of at least
    `large_numel` elements (e.g. one [B, H, T, T] bias)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    count = large = 0
    written = large_written = 0.0
    for event in prof.events():
        if event.name != "aten::copy_" or not event.input_shapes or not event.input_shapes[0]:
            continue
        numel = 1
        for size in event.input_shapes[0]:
            numel *= size
        nbytes = numel * _PROFILER_DTYPE_BYTES.get((event.input_dtypes or ["float"])[0], 4)
        count += 1
        written += nbytes
        if numel >= large_numel:
            large += 1
            large_written += nbytes
    return {"copies": count, "copy_mb": round(written / 2**20, 2), "large_copies": large,
            "large_copy_mb": round(large_written / 2**20, 2)}


def per_item_fbank(wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frontend before batching, for comparison: torchaudio's kaldi.fbank item by item."""
    from .frontend import kaldi_fbank, num_fbank_frames

    frame_lens = num_fbank_frames(wav_lens)
    out = wavs.new_zeros(wavs.shape[0], int(frame_lens.max()), 128, dtype=torch.float32)
    for i, n in enumerate(wav_lens.tolist()):
        feats = kaldi_fbank(wavs[i, :n].float())
        out[i, : feats.shape[0]] = feats
    return out, frame_lens


def fbank_report(batch: int, seconds: float, device: torch.device, repeats: int) -> dict:
    """The batched fbank vs the per-item loop on the same batch: operator calls (device default
    passes, and one pass), best wall time of each, largest difference."""
    from .frontend import batch_fbank

    wavs, lens = _inputs(batch, seconds, device)
    lens[1::2] -= int(0.3 * seconds * SAMPLE_RATE)  # ragged, as real batches are
    counts = {}
    for name, fn in (("loop", lambda: per_item_fbank(wavs, lens)), ("batched", lambda: batch_fbank(wavs, lens)),
                     ("batched_one_pass", lambda: batch_fbank(wavs, lens, batch_frames=1 << 30))):
        fn()
        with OperatorCounter() as ops:
            fn()
        counts[name], counts[name + "_launches"] = ops.total, ops.launches
    loop_s = best_time(lambda: per_item_fbank(wavs, lens), repeats, device)
    batched_s = best_time(lambda: batch_fbank(wavs, lens), repeats, device)
    diff = (per_item_fbank(wavs, lens)[0] - batch_fbank(wavs, lens)[0]).abs().max().item()
    return {"batch": batch, "clip_s": seconds, "loop_ops": counts["loop"], "batched_ops": counts["batched"],
            "batched_one_pass_ops": counts["batched_one_pass"], "loop_launches": counts["loop_launches"],
            "batched_launches": counts["batched_launches"], "batched_one_pass_launches": counts["batched_one_pass_launches"],
            "loop_ms": loop_s * 1e3, "batched_ms": batched_s * 1e3, "max_abs_diff": diff}


def attention_report(size: str, batch: int, seconds: float, device: torch.device, kernels: Sequence[str], repeats: int) -> list[dict]:
    """Per attention kernel, one attention layer of USAD on the input it gets in the model
    (inference; bf16 autocast on CUDA): copies from torch.profiler (all, and those of at least
    one [B, H, T, T] bias) and its time."""
    from .model import build_model

    model = build_model(size).to(device).eval()
    wavs, lens = _inputs(batch, seconds, device)
    attn = model.blocks[0].attn
    seen: list = []
    hook = attn.register_forward_hook(lambda module, args, out: seen.append(args))
    with torch.inference_mode(), _autocast(device):
        model(wavs, lens)
    hook.remove()
    x, pos, pad = seen[0]
    t = x.shape[1]
    bias_numel = batch * attn.heads * t * t
    rows = []
    for kernel in kernels:
        attn.kernel = kernel
        row = {"kernel": kernel, "model": f"usad_{size}", "batch": batch, "clip_s": seconds, "frames": t,
               "bias_mb": round(bias_numel * (2 if device.type == "cuda" else 4) / 2**20, 2)}
        try:
            with torch.inference_mode(), _autocast(device):
                attn(x, pos, pad)
                row.update(copy_profile(lambda: attn(x, pos, pad), bias_numel))
                row["layer_ms"] = best_time(lambda: attn(x, pos, pad), repeats, device) * 1e3
        except Exception as exc:  # a kernel this device lacks: recorded, the others still measured
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
    return rows


def _inputs(batch: int, seconds: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    wavs = (0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=gen)).to(device)
    return wavs, torch.full((batch,), wavs.shape[1], dtype=torch.long, device=device)


def measure_distill(size: str, teachers: dict, dev: torch.device, batch: int, clip_seconds: float, repeats: int,
                    peak_tflops: "float | None", compile_student: bool = False, kernel: str = "auto",
                    cached_targets: bool = False, label: str = "", reference_teachers: "dict | None" = None) -> dict:
    """Time one distillation step configuration. Its FLOPs are the model FLOPs: counted on an
    eager step with `reference_teachers` (default: the same teachers; pass the default-option
    teachers when these run FFT convs or FlexAttention, which the counter does not see)."""
    step = distill_step(size, teachers, dev, compile_student, kernel, cached_targets)
    same = not compile_student and reference_teachers in (None, teachers)
    eager = step if same else distill_step(size, reference_teachers or teachers, dev, False, kernel, cached_targets)
    wavs, lens = _inputs(batch, clip_seconds, dev)
    took = best_time(lambda: step(wavs, lens), repeats, dev)
    if eager is not step:
        eager(wavs, lens)  # with cached targets, the first call runs the teachers: not the step's work
    flops = count_flops(eager, wavs, lens, eager.student)
    return {"student": f"usad_{size}", "teachers": "none (cached targets)" if cached_targets else "wavlm_base_plus+atst_frame",
            "variant": label, "batch": batch, "clip_s": clip_seconds, "compiled": compile_student, "seconds": took,
            "audio_s_per_s": batch * clip_seconds / took, "tflop_per_step": flops / 1e12,
            "achieved_tflops": flops / took / 1e12, "mfu": flops / took / (peak_tflops * 1e12) if peak_tflops else None}


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
    teacher_size: str = "base",
    fbank_batch: int = 16,
    attention_kernels: Sequence[str] = ("blocked", "aligned"),
    fresh_process_memory: bool = True,
    drop_failing: bool = False,
) -> dict:
    """Measure inference throughput (s of audio / s), peak memory, time vs length, the
    distillation step throughput (student + both teachers) and the peak memory of `hear_minutes`
    through hear_api (0 skips it); returns the record. CPU memory is measured in fresh processes
    (RSS has no reset); CUDA memory in this one, from the allocator's peak statistics. With
    `peak_tflops`, each throughput row also gets its model FLOPs (the model without options) and
    MFU. Also: the batched fbank vs the per-item loop at `fbank_batch` clips (0 skips), and the
    attention path's copies per kernel for the first USAD model (no kernels skips).
    `fresh_process_memory=False` measures CPU memory in this process too (fast, but the RSS peak
    then says little: for smoke runs). `drop_failing` leaves out a model whose first call fails
    (e.g. a kernel this GPU lacks) and records why under "failed", instead of raising."""
    dev = torch.device(device)
    torch.set_num_threads(threads)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="usad-bench-"))
    contenders = build_contenders(models, workdir, dev, teacher_size)
    failed: dict[str, str] = {}
    if drop_failing:
        probe = _inputs(batches[0], clip_seconds, dev)
        for c in list(contenders):
            try:
                with torch.inference_mode(), _autocast(dev):
                    c.run(*probe)
            except Exception as exc:  # recorded; the other models are still measured in this run
                failed[c.name] = f"{type(exc).__name__}: {str(exc)[:300]}"
                contenders.remove(c)
    by_name = {c.name: c for c in contenders}
    rows = []
    flops: dict[tuple[str, int], int] = {}
    for batch in batches:
        wavs, lens = _inputs(batch, clip_seconds, dev)
        for c in tqdm(contenders, desc=f"batch {batch} x {clip_seconds:g} s", unit="model"):
            seconds = time_call(c.run, wavs, lens, repeats, dev)
            if dev.type == "cpu" and fresh_process_memory:
                memory = in_fresh_process(run_once_measured, c.name, batch, clip_seconds, threads, device, str(workdir))
            else:
                memory = measure_call(c.run, (wavs, lens), wavs, lens, dev)
            row = {"model": c.name, "params": c.parameters, "batch": batch, "clip_s": clip_seconds,
                   "seconds": seconds, "audio_s_per_s": batch * clip_seconds / seconds, "peak_mem_mb": memory["peak_mem_mb"]}
            if peak_tflops:
                if (c.base, batch) not in flops:
                    reference = by_name.get(c.base) or build_contenders([c.base], workdir, dev, teacher_size)[0]
                    with torch.inference_mode():
                        flops[c.base, batch] = count_flops(reference.run, wavs, lens, getattr(reference.run, "model", None))
                row["gflop_per_call"] = flops[c.base, batch] / 1e9
                row["mfu"] = flops[c.base, batch] / seconds / (peak_tflops * 1e12)
            rows.append(row)
    sweep = []
    for c in contenders:
        if c.name not in sweep_models:
            continue
        for seconds in tqdm(lengths, desc=f"length sweep {c.name}", unit="len"):
            if dev.type == "cpu" and fresh_process_memory:
                took = in_fresh_process(run_once_measured, c.name, 1, seconds, threads, device, str(workdir))
            else:
                took = measure_call(c.run, _inputs(1, 1.0, dev), *_inputs(1, seconds, dev), dev)
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
        teachers = {"wavlm": _teacher("wavlm", workdir, dev, teacher_size=teacher_size),
                    "atst": _teacher("atst_frame", workdir, dev, teacher_size=teacher_size)}
    for size in distill_sizes:
        for batch in distill_batches:
            training.append(measure_distill(size, teachers, dev, batch, clip_seconds, repeats, peak_tflops, compile_student))
    usad = [c.base for c in contenders if c.base.startswith("usad_")]
    record = {
        "device": _device_name(dev), "date": dt.date.today().isoformat(), "threads": threads,
        "torch": torch.__version__, "throughput": rows, "length_sweep": sweep, "distill_step": training,
        "hear_long_input": hear, "ratios": headline_ratios(rows), "failed": failed,
        "fbank": fbank_report(fbank_batch, clip_seconds, dev, repeats) if fbank_batch else None,
        "attention": attention_report(usad[0].removeprefix("usad_"), 1, clip_seconds, dev, attention_kernels, repeats)
        if usad and attention_kernels else [],
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
    lines = [f"Device: {record['device']}, {record['threads']} threads, torch {record['torch']}, {record['date']}", ""]
    with_mfu = any("mfu" in r for r in record["throughput"])
    if record["throughput"]:
        lines += ["| model | params (M) | batch | audio s / s | x WavLM Base+ | x WavLM+ATST | peak mem (MB) |"
                  + (" GFLOP / call | MFU |" if with_mfu else ""),
                  "|---|---|---|---|---|---|---|" + ("---|---|" if with_mfu else "")]
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
            + (f" {r['gflop_per_call']:.1f} | {r['mfu']:.1%} |" if "mfu" in r else " - | - |" if with_mfu else "")
        )
    if record["distill_step"]:
        lines += ["", "| distillation step | variant | teachers | batch | compiled | audio s / s | TFLOP/s | MFU |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {d['student']} | {d.get('variant') or '-'} | {d['teachers']} | {d['batch']} x {d['clip_s']:g} s | "
                  f"{'yes' if d.get('compiled') else 'no'} | {d['audio_s_per_s']:.2f} | "
                  f"{d['achieved_tflops']:.3f} | {'-' if d['mfu'] is None else format(d['mfu'], '.1%')} |"
                  for d in record["distill_step"]]
    if record.get("fbank"):
        f = record["fbank"]
        lines += ["", f"| fbank, {f['batch']} x {f['clip_s']:g} s (ragged) | operator calls | of them not views | best time (ms) |",
                  "|---|---|---|---|",
                  f"| torchaudio kaldi.fbank per item | {f['loop_ops']} | {f['loop_launches']} | {f['loop_ms']:.1f} |",
                  f"| batch_fbank (device default passes) | {f['batched_ops']} | {f['batched_launches']} | {f['batched_ms']:.1f} |",
                  f"| batch_fbank (one pass) | {f['batched_one_pass_ops']} | {f['batched_one_pass_launches']} | - |",
                  "", f"largest difference: {f['max_abs_diff']:.2e}"]
    if record.get("attention"):
        lines += ["", "| attention kernel (one layer) | model | batch | frames | copies | copy MB | bias-sized copies (MB) | "
                  "one bias (MB) | time (ms) |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {a['kernel']} | {a['model']} | {a['batch']} x {a['clip_s']:g} s | {a['frames']} | {a['copies']} | "
                  f"{a['copy_mb']:.2f} | {a['large_copies']} ({a['large_copy_mb']:.2f}) | {a['bias_mb']:.2f} | {a['layer_ms']:.2f} |"
                  if "error" not in a else f"| {a['kernel']} | {a['model']} | failed: {a['error']} |||||||" for a in record["attention"]]
    for name, error in (record.get("failed") or {}).items():
        lines.append(f"- {name}: failed ({error})")
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


def _data_command(args) -> int:  # type: ignore[no-untyped-def]
    from .distill.databench import data_table, run_data_bench, write_data_record

    rows = [int(float(r)) for r in args.data_manifest_rows.split(",") if r]
    record = run_data_bench(Path(args.workdir or tempfile.mkdtemp(prefix="usad-databench-")), args.data_clips, args.data_batches,
                            args.data_rate, args.data_demand, rows, args.data_ranks)
    path = write_data_record(record, args.out)
    print(data_table(record))
    print(f"wrote {path}")
    return 0


def _command(args) -> int:  # type: ignore[no-untyped-def]
    if args.data:
        return _data_command(args)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.gpu_suite:
        from .bench_gpu import gpu_suite, suite_markdown

        suite = gpu_suite(device, args.out, args.peak_tflops, smoke=args.smoke, budget_s=args.budget_s,
                          threads=args.threads, workdir=args.workdir, cpu_compile=args.cpu_compile,
                          only=[x for x in args.stages.split(",") if x] or None)
        print(suite_markdown(suite))
        print(f"wrote {Path(args.out) / 'suite.json'} and suite.md")
        return 0
    record = run_bench(
        models=args.models.split(","), batches=[int(b) for b in args.batches.split(",")],
        clip_seconds=args.clip_seconds, lengths=_floats(args.lengths), sweep_models=args.sweep_models.split(","),
        distill_sizes=[x for x in args.distill_sizes.split(",") if x], distill_batches=[int(b) for b in args.distill_batches.split(",")],
        compile_student=args.compile,
        peak_tflops=args.peak_tflops, hear_minutes=args.hear_minutes, hear_size=args.hear_size,
        repeats=args.repeats, threads=args.threads, workdir=args.workdir, device=device,
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
    p.add_argument("--gpu-suite", action="store_true",
                   help="run issue 23's whole GPU measurement instead (usad_upstream/bench_gpu.py; suite.json / suite.md in --out)")
    p.add_argument("--smoke", action="store_true", help="with --gpu-suite: the same stages on tiny models (checks the logic)")
    p.add_argument("--budget-s", type=float, default=540.0, help="with --gpu-suite: skip stages that would start later")
    p.add_argument("--cpu-compile", action="store_true", help="with --gpu-suite on a CPU: also run the torch.compile stages")
    p.add_argument("--stages", default="", help="with --gpu-suite: only these stages (comma-separated; default all)")
    d = p.add_argument_group("--data: distillation input (loader throughput per worker, TSV vs shards; manifest start-up at scale)")
    d.add_argument("--data", action="store_true", help="measure the data path instead of the models")
    d.add_argument("--data-clips", type=int, default=240, help="synthetic 10 s clips for the loader passes (0 skips them)")
    d.add_argument("--data-batches", type=int, default=12, help="micro-batches of 100 s per pass")
    d.add_argument("--data-rate", type=int, default=16000, help="sample rate of the synthetic source files")
    d.add_argument("--data-demand", type=float, default=1303.0,
                   help="audio s/s one training step consumes (default: USAD Base eager, 64 x 10 s, H100)")
    d.add_argument("--data-manifest-rows", default="1000000", help="synthetic manifest sizes for the start-up measurement ('' skips)")
    d.add_argument("--data-ranks", type=int, default=3, help="ranks started together on the mapped manifest")
    p.set_defaults(func=_command)
