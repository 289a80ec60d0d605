"""`usad distill`, `usad distill-cache`, `usad export` (also `--hf`: the release format), `usad manifest build` and `usad shards build`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..model import UsadModel


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
    from .data import DataConfig
    from .shards import open_data
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
    entries = open_data(data.manifests, data.shards)
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


def run_student(run_checkpoint: "str | Path") -> "tuple[UsadModel, dict[str, str], Path]":
    """Student of a distillation checkpoint or run directory (heads dropped), its metadata and the run directory."""
    from .student import student_from_run

    path, state, model = student_from_run(run_checkpoint)
    extra = {"distilled_step": str(state.get("step")), "distilled_from": str(path.resolve())}
    return model.eval(), extra, path.resolve().parent.parent


def _export_source(source: str, trust_remote_code: bool) -> "tuple[UsadModel, dict[str, str], Path | None, str]":
    """(model, metadata, run dir, kind) of what `usad export` was given: a distillation run or its
    step_*.pt, a student .safetensors, an export directory, or a release (converted, verified)."""
    from ..checkpoint import read_safetensors
    from ..release import load_encoder, resolve_checkpoint
    from ..release.convert import convert

    path = Path(source)
    if (path.is_dir() and not (path / "config.json").is_file()) or (path.is_file() and path.suffix != ".safetensors"):
        return (*run_student(path), "run")
    resolved = resolve_checkpoint(source)
    if resolved.kind == "release":
        model, metadata = convert(resolved, trust_remote_code)
        return model, metadata, None, "release"
    metadata = read_safetensors(resolved.path)[1] if resolved.kind == "student" else {}
    distilled = Path(metadata["distilled_from"]) if "distilled_from" in metadata else None
    run_dir = distilled.parent.parent if distilled is not None and distilled.parent.name == "checkpoints" else None
    extra = {k: v for k, v in metadata.items() if k not in ("format", "format_version", "config")}
    return load_encoder(resolved), extra, run_dir, resolved.kind


def _export(args: argparse.Namespace) -> int:
    from ..checkpoint import save_checkpoint

    if not args.output and not args.hf:
        raise ValueError("usad export needs -o student.safetensors and/or --hf DIR")
    model, metadata, run_dir, kind = _export_source(args.source, args.trust_remote_code)
    if args.output:
        if kind in ("student", "export") and not args.hf:
            raise ValueError(f"{args.source}: already a native checkpoint ({kind}); `-o` writes one from a "
                             "distillation run or a release, `--hf DIR` exports it in the release's format")
        out = save_checkpoint(model, args.output, extra=metadata)
        print(f"wrote {out} (load with usad_upstream.load_model, s3prl `-u usad -k {out}`, or hear_api)")
    if args.hf:
        from ..release.hf_export import card_from_run, export_hf

        directory = export_hf(model, args.hf, card_from_run(run_dir, metadata))
        print(f"wrote {directory}: AutoModel.from_pretrained('{directory}', trust_remote_code=True) "
              "(needs torch, torchaudio, transformers only)")
    return 0


def _manifest_build(args: argparse.Namespace) -> int:
    from collections import Counter

    from .data import build_manifest, read_manifest, write_manifest

    partial = Path(f"{args.output}.partial")
    if partial.is_file():
        print(f"resuming the scan recorded in {partial}")
    entries, skipped = build_manifest(args.sources, args.domain, args.min_seconds, jobs=args.jobs, progress=True, partial=partial)
    if args.append and Path(args.output).is_file():
        old = list(read_manifest(args.output))
        known = {e.path for e in old}
        entries = old + [e for e in entries if e.path not in known]
    if not entries:
        raise ValueError(f"no readable audio found in {args.sources} (skipped: {dict(skipped) or 'none'})")
    write_manifest(entries, args.output)
    read_manifest(args.output)  # its columnar copy, made now: training runs map it instead of parsing the TSV
    partial.unlink()
    domains = Counter(e.domain for e in entries)
    hours = sum(e.seconds for e in entries) / 3600
    print(
        f"wrote {args.output}: {len(entries)} files, {hours:.2f} h ({dict(domains)}); "
        f"skipped {sum(skipped.values())} ({dict(skipped) or 'none'})"
    )
    return 0


def _shards_build(args: argparse.Namespace) -> int:
    from .shards import build_shards

    counts = build_shards(args.manifest, args.output, args.shard_size, args.jobs, args.seed)
    print(
        f"wrote {args.output}: {counts['clips_total']} clips in {counts['shards']} Lhotse Shar shards "
        f"({counts['shards_before']} were already there); unreadable {counts['unreadable']}; "
        f"train with data.shards=[{args.output}]"
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

    p = sub.add_parser("export", help="a distillation run as a student .safetensors (-o) and/or in the release's "
                                      "Hugging Face format (--hf DIR)")
    p.add_argument("source", help="run directory (latest checkpoint) or its checkpoints/step_*.pt; for --hf also a "
                                  "student .safetensors; a release snapshot or hub id is converted first (verified)")
    p.add_argument("-o", "--output", help="output .safetensors path")
    p.add_argument("--hf", metavar="DIR", help="new directory: config.json, model.safetensors, modeling files, "
                                               "README.md model card (AutoModel with trust_remote_code=True)")
    p.add_argument("--trust-remote-code", action="store_true", help="a release source: allow running its code")
    p.set_defaults(func=_export)

    p = sub.add_parser("manifest", help="distillation manifests")
    msub = p.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    b = msub.add_parser("build", help="scan audio (directories or file lists) into a manifest TSV")
    b.add_argument("sources", nargs="+", help="directories (recursive), audio files, or text files listing paths")
    b.add_argument("--domain", required=True, choices=["speech", "sound", "music"])
    b.add_argument("--min-seconds", type=float, default=0.0, help="skip files shorter than this")
    b.add_argument("--append", action="store_true", help="add to an existing manifest (e.g. another domain)")
    b.add_argument("--jobs", type=int, default=16, help="headers read at once (threads; default 16)")
    b.add_argument("-o", "--output", required=True, help="manifest .tsv path (an interrupted scan resumes from OUTPUT.partial)")
    b.set_defaults(func=_manifest_build)

    p = sub.add_parser("shards", help="sharded distillation data (Lhotse Shar)")
    ssub = p.add_subparsers(dest="shards_command", required=True, metavar="ACTION")
    b = ssub.add_parser(
        "build", help="convert manifests into Lhotse Shar shards (16 kHz mono FLAC) for data.shards=[DIR]",
        description="Clips are shuffled (--seed) into shards of --shard-size; a rerun of the same command resumes.",
    )
    b.add_argument("--manifest", action="append", required=True, help="manifest .tsv (repeat for several)")
    b.add_argument("-o", "--output", required=True, help="output directory")
    b.add_argument("--shard-size", type=int, default=1000, help="clips per shard (default 1000: ~160 MB of 10 s clips)")
    b.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="shards written at once (processes)")
    b.add_argument("--seed", type=int, default=0, help="seed of the clip shuffle before sharding")
    b.set_defaults(func=_shards_build)
