"""The distillation loop. Read it top to bottom: set-up, resume, then one optimizer step per loop.

Runs as one process or under `torchrun --nproc_per_node N` (DistributedDataParallel; nccl on
GPU, gloo on CPU). A step takes `train.batch_seconds` of audio in total, split into
world_size x grad_accum micro-batches. Losses are frame sums divided by the frame count of the
WHOLE step (summed over micro-batches and ranks before the student runs), so N processes give
the same loss and gradients as one process on the same global batch. Domain-aware weighting
(`objective.domain_omega`) scales each clip's frame sums by its teacher weights inside those sums
and leaves the divisor unweighted, so the same holds with it (objective.py). Only rank 0 writes files.

Run directory:
  config.yaml         the config used (a resumed run must ask for the same one)
  metrics.csv         step, lr, loss, loss/<teacher>/L<layer>, loss/<teacher>/<domain> (each teacher's
                      unweighted mean frame loss on the clips of each domain), grad norm, audio s/s, skipped files
  tb/                 the same scalars for TensorBoard
  checkpoints/step_XXXXXXXX.pt   student, heads, optimizer, scheduler, RNG and sampler states
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from .. import build_model
from ..frontend import batch_fbank, check_waveforms, num_fbank_frames
from ..model import ConvSubsampling, UsadModel
from ..teachers.base import Teacher
from .config import TRAINER_FIELDS, resume_conflicts
from .data import DOMAINS, SKIP_KINDS, DataConfig, DistillData
from .objective import DistillObjective, ObjectiveOutput, Targets, TeacherSpec, layer_mapping, resolve_layers
from .shards import open_data

log = logging.getLogger(__name__)
CKPT_GLOB = "step_*.pt"


# ----------------------------------------------------------------------------- pieces
class Distiller(nn.Module):
    """Student + heads as one module (what DDP wraps). The fbank runs in fp32 outside autocast."""

    def __init__(self, student: UsadModel, objective: DistillObjective, autocast_dtype: "torch.dtype | None") -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.autocast_dtype = autocast_dtype

    def forward(
        self, wavs: torch.Tensor, lens: torch.Tensor, targets: Mapping[str, Targets], normalizer: Mapping[str, torch.Tensor],
        domains: "torch.Tensor | None" = None,
    ) -> ObjectiveOutput:
        lens = check_waveforms(wavs, lens)
        feats, frame_lens = batch_fbank(wavs, lens)
        enabled = self.autocast_dtype is not None
        with torch.autocast(wavs.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=enabled):
            parts = list(self.student.chunks(feats, frame_lens))  # windows of max_fbank_frames
            layers = [torch.cat([p["hidden_states"][i] for p in parts], dim=1) for i in range(len(parts[0]["hidden_states"]))]
            lengths = sum(p["lengths"] for p in parts)
            return self.objective(layers, lengths, targets, normalizer, domains)


def teacher_targets(
    teachers: Mapping[str, Teacher], objective: DistillObjective, wavs: torch.Tensor, lens: torch.Tensor,
    autocast_dtype: "torch.dtype | None",
) -> dict[str, Targets]:
    """Every teacher's distilled layers for one micro-batch, in the student's autocast: frozen
    teachers need no fp32 matmuls on a GPU, where they would cost more than the student's step."""
    with torch.autocast(wavs.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        return {n: objective.targets_from(n, t(wavs, lens)) for n, t in teachers.items()}


def student_frames(wav_lens: torch.Tensor, time_stride: int = 2) -> torch.Tensor:
    """Valid student frames per item, known before the forward pass (fbank frames, then the
    student's time stride: 2 at 50 Hz, 4 at 25 Hz)."""
    return ConvSubsampling.output_lengths(num_fbank_frames(wav_lens), time_stride)


def lr_lambda(warmup: int, total: int):  # type: ignore[no-untyped-def]
    """Linear warmup to the peak LR over `warmup` steps, then linear decay to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def build_teachers(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Teacher]:
    """Instantiate every configured teacher through usad_upstream.teachers.build_teacher."""
    from ..teachers import build_teacher

    for name, spec in specs.items():
        if "path" in spec and not spec["path"]:
            raise ValueError(f"teacher {name!r} has no checkpoint: add teachers.{name}.path=/path/to/its/checkpoint")
    return {
        name: build_teacher({k: v for k, v in spec.items() if k not in TRAINER_FIELDS}).freeze() for name, spec in specs.items()
    }


def teacher_spec(name: str, entry: Mapping[str, Any], num_layers: int, dim: int, frame_rate: float) -> TeacherSpec:
    """The objective's view of one teacher: its shape and rate plus the config's trainer fields."""
    return TeacherSpec(name, num_layers, dim, float(frame_rate), float(entry.get("weight", 1.0)), entry.get("domain"),
                       resolve_layers(entry.get("layers"), num_layers, name))


def teacher_specs(config: Mapping[str, Any], teachers: Mapping[str, Teacher]) -> list[TeacherSpec]:
    return [teacher_spec(name, config["teachers"][name], t.num_layers, t.dim, t.frame_rate) for name, t in teachers.items()]


def distilled_teacher_layers(num_layers: int, k: int) -> list[int]:
    return [tl for _, tl in layer_mapping(num_layers, num_layers, k)]


def teacher_layer_lists(specs: "list[TeacherSpec]", k: int) -> dict[str, list[int]]:
    """The teacher layers distilled from each teacher: its own list, else the K-sparse mapping's."""
    return {s.name: list(s.layers) if s.layers else distilled_teacher_layers(s.num_layers, k) for s in specs}


def check_same_architecture(student: UsadModel, source: UsadModel, path: str) -> None:
    """`train.init_from` must hold the architecture being trained (dropout and name may differ)."""
    loose = {"dropout", "name", "extra", "max_fbank_frames"}
    a, b = student.config.to_dict(), source.config.to_dict()
    diff = [f"{k}: config {a[k]!r}, checkpoint {b[k]!r}" for k in a if k not in loose and a[k] != b[k]]
    if diff:
        raise ValueError(f"train.init_from={path} holds another architecture than model: ({'; '.join(diff)})")


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states (only its own GPU: touching the others would open CUDA contexts there)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def latest_checkpoint(run_dir: Path) -> "Path | None":
    ckpts = sorted((run_dir / "checkpoints").glob(CKPT_GLOB))
    return ckpts[-1] if ckpts else None


def save_run_checkpoint(path: Path, state: dict[str, Any], keep_last: int) -> None:
    """Atomic torch.save, then delete all but the newest `keep_last` step checkpoints."""
    from ..checkpoint import atomic_write

    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for old in sorted(path.parent.glob(CKPT_GLOB))[:-keep_last]:
        old.unlink()


class MetricsLog:
    """metrics.csv + TensorBoard, rank 0 only. On resume, rows after the resumed step are dropped
    (they came from steps a killed run did after its last checkpoint)."""

    def __init__(self, run_dir: Path, columns: list[str], resumed_step: int) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ValueError("usad distill logs to TensorBoard through tensorboardX: pip install tensorboardX") from None

        self.path = run_dir / "metrics.csv"
        self.columns = columns
        rows = []
        if resumed_step and self.path.is_file():
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resumed_step]
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resumed_step + 1 if resumed_step else None)

    def write(self, row: Mapping[str, float]) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns).writerow(row)
        for key, value in row.items():
            if key != "step" and not math.isnan(value):  # nan: no clip of that domain in the interval
                self.tb.add_scalar(key, value, int(row["step"]))
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


class StopRequest:
    """SIGTERM (cluster pre-emption, `kill PID`) asks for a checkpoint after the current step, then a
    clean exit; a later run resumes from it. SIGKILL cannot be caught: periodic checkpoints cover it."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def setup_distributed(device_name: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world_size, device, whether we created the process group) from torchrun's env vars."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_name == "auto" else device_name.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("train.device asks for cuda but torch sees no GPU")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        created = True
    return rank, world, device, created


def all_sum(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(x)
    return x


# ----------------------------------------------------------------------------- the run
def train(config: dict[str, Any], teachers: "Mapping[str, Teacher] | None" = None, progress: bool = True) -> list[dict[str, float]]:
    """Distil (or resume distilling) a student as `config` says; returns the logged metric rows.

    `teachers` replaces building them from config["teachers"] (their loss weights still come
    from the config); with config["cache"]["dir"] set, no teacher runs at all.
    """
    tc = config["train"]
    rank, world, device, created_group = setup_distributed(tc["device"])
    run_dir = Path(config["run_dir"])
    data_cfg = DataConfig.from_dict(config["data"])
    k = config["objective"]["num_layers"]
    entries = open_data(data_cfg.manifests, data_cfg.shards)
    if not len(entries):
        raise ValueError("data.manifests lists no audio: set data.manifests=[manifest.tsv] (see `usad manifest build`) "
                         "or data.shards=[DIR] (see `usad shards build`)")

    # --- resume? the run dir's config must match what is asked for now
    ckpt_path = latest_checkpoint(run_dir)
    saved_cfg = run_dir / "config.yaml"
    state: "dict[str, Any] | None" = None
    if ckpt_path is not None:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        conflicts = resume_conflicts(yaml.safe_load(saved_cfg.read_text()) if saved_cfg.is_file() else state["config"], config)
        if conflicts:
            raise ValueError(f"{run_dir} holds a run with a different config ({', '.join(conflicts)}); use a new run_dir")
        if state["micro_batches_per_step"] != world * tc["grad_accum"]:
            raise ValueError(
                f"{ckpt_path} was trained with world_size x grad_accum = {state['micro_batches_per_step']} micro-batches "
                f"per step, this run has {world} x {tc['grad_accum']}: set train.grad_accum so the product matches"
            )
    if rank == 0:  # atomically: after an elastic restart the other ranks may be reading it right now
        from ..checkpoint import atomic_write

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(saved_cfg, lambda tmp: Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False)))

    # --- teachers (or their cached targets) and the model
    cache = None
    if config["cache"]["dir"]:
        from .cache import TargetCache

        cache = TargetCache.open(config["cache"]["dir"])
        specs = [teacher_spec(n, config["teachers"].get(n, {}), s.num_layers, s.dim, s.frame_rate) for n, s in cache.specs.items()]
        cache.check(config["teachers"], data_cfg, teacher_layer_lists(specs, k))
        teachers = {}
    else:
        teachers = dict(teachers) if teachers is not None else build_teachers(config["teachers"])
        missing = sorted(set(config["teachers"]) ^ set(teachers))
        if missing:
            raise ValueError(f"teachers {missing} are not both configured and given")
        specs = teacher_specs(config, teachers)
        teachers = {n: t.to(device) for n, t in teachers.items()}

    torch.manual_seed(tc["seed"])  # same initial weights on every rank
    model_cfg = dict(config["model"])
    student = build_model(model_cfg.pop("size"), **model_cfg)
    student.final_norm.requires_grad_(False)  # the objective reads block outputs, never the final norm
    if tc["init_from"] and state is None:  # a fresh run from another run's student (USAD 2.0 stage 2)
        from .student import load_student

        source = load_student(tc["init_from"])
        check_same_architecture(student, source, tc["init_from"])
        student.load_state_dict(source.state_dict())
        if rank == 0:
            print(f"student initialised from {tc['init_from']}")
    oc = config["objective"]
    objective = DistillObjective(student.config.dim, student.config.layers, specs, k, oc["head_hidden"],
                                 float(student.config.frame_rate), oc["domain_omega"])
    bf16 = tc["precision"] == "bf16" or (tc["precision"] == "auto" and device.type == "cuda")
    distiller = Distiller(student, objective, torch.bfloat16 if bf16 else None).to(device)
    model: nn.Module = distiller
    if world > 1:
        model = nn.parallel.DistributedDataParallel(distiller, device_ids=[device.index] if device.type == "cuda" else None)

    params = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tc["weight_decay"]},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],  # no decay on biases / norms
        lr=tc["lr"], betas=tuple(tc["betas"]), eps=tc["eps"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc["warmup_steps"], tc["max_steps"]))

    # several processes: rank 0 plans each epoch into run_dir/plans, every rank maps that one copy
    plan_dir = run_dir / "plans" if world > 1 else None
    data = DistillData(entries, data_cfg, tc["batch_seconds"], tc["seed"], world, rank, tc["grad_accum"], cache, plan_dir)
    if data_cfg.speech_share is not None and rank == 0:
        print(f"data.speech_share {data_cfg.speech_share}: domain weights {data.planner.domain_weights}")

    step, skipped = 0, Counter()
    if state is not None and ckpt_path is not None:
        distiller.student.load_state_dict(state["student"])
        distiller.objective.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data.load_state_dict(state["sampler"])
        step, skipped = state["step"], Counter(state["skipped"])
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank], device)
        else:
            log.warning("resuming %d processes from a %d-process run: RNG streams are reseeded", world, len(state["rng"]))
            torch.manual_seed(tc["seed"] * 1000 + rank + step)
        state = None  # free the loaded copy (optimizer moments can be GBs)
        if rank == 0:
            print(f"resumed {run_dir} at step {step} from {ckpt_path.name}")
    else:
        torch.manual_seed(tc["seed"] * 1000 + rank)  # dropout streams differ across ranks
        random.seed(tc["seed"] * 1000 + rank)
        np.random.seed(tc["seed"] * 1000 + rank)

    heads = [(name, tl) for name in objective.teachers for tl in objective.teacher_layers(name)]
    domains = [d for i, d in enumerate(DOMAINS) if (entries.domain == i).any()]  # those the manifests hold
    per_domain = [(name, d) for name in objective.teachers for d in domains]
    columns = (
        ["step", "epoch", "lr", "loss"] + [f"loss/{n}/L{tl}" for n, tl in heads] + [f"loss/{n}/{d}" for n, d in per_domain]
        + ["grad_norm", "audio_seconds", "audio_sec_per_sec"] + [f"skipped/{kind}" for kind in SKIP_KINDS]
    )
    metrics = MetricsLog(run_dir, columns, step) if rank == 0 else None

    # --- the loop
    from tqdm import tqdm

    bar = tqdm(total=tc["max_steps"], initial=step, disable=rank != 0 or not progress, unit="step", dynamic_ncols=True)
    names = list(objective.teachers)
    history: list[dict[str, float]] = []
    # loss, per-head losses, per-(teacher, domain) frame-loss sums and frames, audio seconds
    sums = torch.zeros(1 + len(heads) + 2 * len(per_domain) + 1, dtype=torch.float64)
    domain_slot = {d: DOMAINS.index(d) for d in domains}
    steps_since_log, t_log, grad_norm = 0, time.perf_counter(), torch.zeros(())
    stop = min(tc["max_steps"], tc["stop_after"] or tc["max_steps"])
    batches = iter(data)
    stop_request = StopRequest()
    distiller.train()
    while step < stop:
        group = next(batches)

        # 1. targets for every micro-batch of this rank, and the step's global frame counts
        targets, counts = [], torch.zeros(len(names), dtype=torch.float64)
        for micro in group:
            if cache is not None:
                tgt = {n: Targets({tl: x.to(device) for tl, x in t.layers.items()}, t.lengths.to(device)) for n, t in micro["targets"].items()}
            else:
                wavs, lens = micro["wavs"].to(device), micro["lens"].to(device)
                tgt = teacher_targets(teachers, objective, wavs, lens, distiller.autocast_dtype)
            targets.append(tgt)
            frames = objective.frame_counts(student_frames(micro["lens"], student.config.time_stride).to(device), tgt)
            counts += torch.tensor([float(frames[n]) for n in names], dtype=torch.float64)
        counts = all_sum(counts.to(device), world).cpu()
        normalizer = {n: counts[i].float().to(device) for i, n in enumerate(names)}

        # 2. student forward/backward per micro-batch; DDP syncs gradients on the last one
        optimizer.zero_grad(set_to_none=True)
        step_sums = torch.zeros(len(sums), dtype=torch.float64, device=device)  # read back once per step
        for i, micro in enumerate(group):
            sync = world == 1 or i == len(group) - 1
            with contextlib.nullcontext() if sync else model.no_sync():
                clip_domains = micro["domains"].to(device)
                out = model(micro["wavs"].to(device), micro["lens"].to(device), targets[i], normalizer, clip_domains)
                (out.total * world).backward()  # DDP averages gradients over ranks; sums are what we want
            step_sums[: 1 + len(heads)] += torch.stack([out.total.detach(), *(out.losses[h].detach() for h in heads)]).double()
            for j, (n, d) in enumerate(per_domain):
                of_domain = clip_domains == domain_slot[d]
                step_sums[1 + len(heads) + j] += out.clip_losses[n][of_domain].sum().double()
                step_sums[1 + len(heads) + len(per_domain) + j] += out.clip_frames[n][of_domain].sum().double()
            step_sums[-1] += float(micro["lens"].sum()) / 16000
            skipped.update(micro["skipped"])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc["clip_grad"])
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        step += 1
        sums += all_sum(step_sums, world).cpu()
        steps_since_log += 1
        bar.update(1)

        # 3. logging (every rank joins the reductions, rank 0 writes)
        if step % tc["log_every"] == 0 or step == stop:
            elapsed = time.perf_counter() - t_log
            skip_counts = all_sum(torch.tensor([float(skipped[kind]) for kind in SKIP_KINDS], dtype=torch.float64).to(device), world).cpu()
            skip_counts[SKIP_KINDS.index("too_short")] += data.planner.skipped["too_short"]  # manifest-level, same on all ranks
            mean = sums / steps_since_log
            row = {"step": step, "epoch": data.epoch, "lr": lr, "loss": float(mean[0])}
            row.update({f"loss/{n}/L{tl}": float(mean[1 + j]) for j, (n, tl) in enumerate(heads)})
            for j, (n, d) in enumerate(per_domain):  # mean frame loss over the interval's clips of domain d
                frames = float(sums[1 + len(heads) + len(per_domain) + j])
                row[f"loss/{n}/{d}"] = float(sums[1 + len(heads) + j]) / frames if frames else math.nan
            row.update({"grad_norm": float(grad_norm), "audio_seconds": float(sums[-1]), "audio_sec_per_sec": float(sums[-1]) / elapsed})
            row.update({f"skipped/{kind}": float(skip_counts[j]) for j, kind in enumerate(SKIP_KINDS)})
            history.append(row)
            if metrics is not None:
                metrics.write(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", audio_s_per_s=f"{row['audio_sec_per_sec']:.1f}", refresh=False)
            sums.zero_()
            steps_since_log, t_log = 0, time.perf_counter()

        # 4. checkpoints (RNG states come from every rank); a SIGTERM on any rank stops all of them
        stopping = bool(all_sum(torch.tensor([float(stop_request.requested)], device=device), world).item() > 0)
        ckpt_path = run_dir / "checkpoints" / f"step_{step:08d}.pt"
        if step % tc["ckpt_every"] == 0 or step == stop or stopping:
            rngs: list[Any] = [None] * world
            if world > 1:
                dist.all_gather_object(rngs, rng_state(device))
            else:
                rngs = [rng_state(device)]
            if rank == 0:
                save_run_checkpoint(ckpt_path, {
                    "step": step,
                    "student": distiller.student.state_dict(),
                    "student_config": distiller.student.config.to_dict(),
                    "heads": distiller.objective.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "sampler": data.state_dict(),
                    "micro_batches_per_step": data.group,
                    "rng": rngs,
                    "skipped": dict(skipped),
                    "config": config,
                    "final": step == tc["max_steps"],
                }, tc["keep_last"])
        if stopping:
            if rank == 0:
                print(f"stopped by SIGTERM after step {step}; saved {ckpt_path}; run the same command to resume", flush=True)
            break
    stop_request.restore()
    bar.close()
    if metrics is not None:
        metrics.close()
    if created_group:
        dist.destroy_process_group()
    return history
