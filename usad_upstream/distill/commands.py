"""`usad distill`, `usad distill-cache`, `usad export` and `usad manifest build`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _distill(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.config, args.overrides)
    from .trainer import train

    history = train(config)
    if int(os.environ.get("RANK", "0")) == 0 and history:
        last = history[-1]
        # throughput without the first log interval, which includes start-up (first batches, warm-up)
        timed = history[1:] or history
        first = int(history[0]["step"]) + 1 if len(history) > 1 else 1
        seconds = sum(r["audio_seconds"] for r in timed)
        wall = sum(r["audio_seconds"] / r["audio_sec_per_sec"] for r in timed)
        print(
            f"step {int(last['step'])}: loss {last['loss']:.4f}; {seconds / wall:.2f} s of audio/s over steps "
            f"{first}-{int(last['step'])}; run dir {config['run_dir']} "
            f"(export: usad export {config['run_dir']} -o student.safetensors)"
        )
    return 0


def _cache(args: argparse.Namespace) -> int:
    import torch

    from .config import load_config

    from .cache import TargetCache, build_cache
    from .data import DataConfig, Manifest, read_manifest
    from .trainer import build_teachers, teacher_layer_lists, teacher_specs

    config = load_config(args.config, args.overrides)
    if not config["cache"]["dir"]:
        raise ValueError("set cache.dir=DIR: where to store the teacher targets")
    data = DataConfig.from_dict(config["data"])
    if data.crop != "segments":
        raise ValueError("the target cache needs fixed crops: add data.crop=segments (and use it when training too)")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(config)
    teachers = {n: t.to(device) for n, t in build_teachers(config["teachers"]).items()}
    specs = {s.name: s for s in teacher_specs(config, teachers)}
    layers = teacher_layer_lists(list(specs.values()), config["objective"]["num_layers"])
    cache = TargetCache.create(config["cache"]["dir"], TargetCache.describe(config["teachers"], specs, layers, data))
    entries = Manifest.concat([read_manifest(m) for m in data.manifests])
    with torch.inference_mode():
        counts = build_cache(cache, entries, data, teachers, device, config["train"]["batch_seconds"], rank, world, progress=rank == 0)
    print(f"rank {rank}: target cache {cache.root}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def _device(config: dict) -> "torch.device":
    """This process's device; caching needs no process group, ranks just take every N-th crop."""
    import torch

    name = config["train"]["device"]
    if (name == "auto" and torch.cuda.is_available()) or name.startswith("cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def export_student(run_checkpoint: "str | Path", output: "str | Path") -> Path:
    """Student weights of a distillation checkpoint (heads dropped) -> a USAD .safetensors file."""
    from ..checkpoint import save_checkpoint
    from .student import student_from_run

    path, state, model = student_from_run(run_checkpoint)
    extra = {"distilled_step": str(state.get("step")), "distilled_from": str(path.resolve())}
    return save_checkpoint(model, output, extra=extra)


def _export(args: argparse.Namespace) -> int:
    out = export_student(args.run_checkpoint, args.output)
    print(f"wrote {out} (load with usad_upstream.load_model, s3prl `-u usad -k {out}`, or hear_api)")
    return 0


def _manifest_build(args: argparse.Namespace) -> int:
    from collections import Counter

    from .data import build_manifest, read_manifest, write_manifest

    entries, skipped = build_manifest(args.sources, args.domain, args.min_seconds)
    if args.append and Path(args.output).is_file():
        old = list(read_manifest(args.output))
        known = {e.path for e in old}
        entries = old + [e for e in entries if e.path not in known]
    if not entries:
        raise ValueError(f"no readable audio found in {args.sources} (skipped: {dict(skipped) or 'none'})")
    write_manifest(entries, args.output)
    domains = Counter(e.domain for e in entries)
    hours = sum(e.seconds for e in entries) / 3600
    print(
        f"wrote {args.output}: {len(entries)} files, {hours:.2f} h ({dict(domains)}); "
        f"skipped {sum(skipped.values())} ({dict(skipped) or 'none'})"
    )
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    overrides_help = "dotted overrides, e.g. teachers.wavlm.path=/ckpt/WavLM-Base+.pt train.lr=5e-4"
    p = sub.add_parser(
        "distill",
        help="distil a USAD student from frozen teachers (also under torchrun)",
        description="Train (or resume, when run_dir holds checkpoints). Presets: tiny, small_ablation, small, base, "
        "large (USAD), usad2_<size>_stage1 / usad2_<size>_stage2 (USAD 2.0), or a YAML file. With cache.dir=DIR, "
        "train from targets stored by `usad distill-cache`.",
    )
    p.add_argument("--config", required=True, help="preset name or YAML file")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=_distill)

    p = sub.add_parser(
        "distill-cache",
        help="precompute the teachers' targets once (float16) for `usad distill ... cache.dir=DIR`",
        description="Needs data.crop=segments and cache.dir=DIR; resumable, and splits the work under torchrun.",
    )
    p.add_argument("--config", required=True, help="preset name or YAML file (the same as for training)")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=_cache)

    p = sub.add_parser("export", help="turn a distillation checkpoint into a student .safetensors (heads dropped)")
    p.add_argument("run_checkpoint", help="checkpoints/step_*.pt of a run, or the run directory (latest checkpoint)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.set_defaults(func=_export)

    p = sub.add_parser("manifest", help="distillation manifests")
    msub = p.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    b = msub.add_parser("build", help="scan audio (directories or file lists) into a manifest TSV")
    b.add_argument("sources", nargs="+", help="directories (recursive), audio files, or text files listing paths")
    b.add_argument("--domain", required=True, choices=["speech", "sound", "music"])
    b.add_argument("--min-seconds", type=float, default=0.0, help="skip files shorter than this")
    b.add_argument("--append", action="store_true", help="add to an existing manifest (e.g. another domain)")
    b.add_argument("-o", "--output", required=True, help="manifest .tsv path")
    b.set_defaults(func=_manifest_build)
