"""`usad demo repro`: which parts of the demo are bitwise reproducible, measured on its own models.

Each part runs in fresh processes under several settings of the same machine and is compared
with the default run:
- "default again"     the same command twice: is it bitwise reproducible on one machine?
- "2 threads"         OpenMP's split of reductions (the demo runs stages on one thread each);
- "ATen avx2"         ATEN_CPU_CAPABILITY=avx2: ATen's own vector kernels (layer norm, softmax,
                      GELU, reductions) as on a CPU without AVX-512;
- "emulated avx2 CPU" ATen, oneDNN and MKL all capped at AVX2 (pipeline.EMULATED_CPUS), the
                      closest stand-in for another CPU kind this machine can give.
Parts: the frozen models' features (student, speech and audio teacher) on a few test files, a
few distillation steps (bf16 autocast where the CPU has it, fp32 as on a CPU without it), one
heareval probe and one s3prl probe of the student (their test predictions).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from .pipeline import EMULATED_CPUS, HEAREVAL_SEED, S3PRL_SEED, machine, native_bf16_cpu

SETTINGS = {
    "default": {},
    "default again": {},
    "2 threads": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    "ATen avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "emulated avx2 CPU": EMULATED_CPUS["avx2"],
}


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    full = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **os.environ, **env,
            "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as handle:
        rc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=full).returncode
    if rc != 0:
        raise ValueError(f"`{' '.join(cmd)}` failed (exit status {rc}); see {log}")


def _usad(*args: object) -> list[str]:
    return [sys.executable, "-m", "downstream_recipes.cli", *map(str, args)]


def _difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    """Bitwise equality and the largest absolute difference over every array of two runs."""
    if set(a) != set(b):
        raise ValueError("the two runs wrote different arrays")
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) if a[k].size else 0.0 for k in a)
    scale = max(float(np.abs(a[k]).max()) if a[k].size else 0.0 for k in a)
    return {"bitwise equal": all(np.array_equal(a[k], b[k]) for k in a), "max abs difference": worst, "max abs value": scale}


def features(spec_file: Path, files: list[str], out: Path) -> None:
    """Every layer of every model in spec_file ({name: teacher spec}) on each file, alone."""
    import soundfile as sf
    import torch

    from usad_upstream.teachers import build_teacher

    torch.manual_seed(0)
    arrays = {}
    for name, spec in json.loads(spec_file.read_text()).items():
        teacher = build_teacher(spec)
        for i, path in enumerate(files):
            wav, _ = sf.read(path, dtype="float32")
            wav = torch.from_numpy(wav if wav.ndim == 1 else wav.mean(1))[None]
            output = teacher(wav, torch.tensor([wav.shape[1]]))
            for k, layer in enumerate(output.layers):
                arrays[f"{name}/{i}/{k}"] = layer[0].float().numpy()
    np.savez(out, **arrays)


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _test_files(run: Path, count: int) -> list[str]:
    import csv

    corpora = run / "corpora"
    with open(corpora / "fluent_speech_commands" / "data" / "test_data.csv", newline="") as handle:
        speech = [str(corpora / "fluent_speech_commands" / r["path"]) for r in csv.DictReader(handle)][:count]
    pitch = corpora / "hear" / "tasks" / "pitch"
    music = [str(pitch / "16000" / "test" / f) for f in sorted(json.loads((pitch / "test.json").read_text()))[:count]]
    return speech + music


def _compare_all(results: dict[str, object], read) -> dict:  # type: ignore[no-untyped-def]
    base = read(results["default"])
    return {name: _difference(base, read(path)) for name, path in results.items() if name != "default"}


def measure_features(run: Path, work: Path, count: int) -> dict:
    models = run / "models"
    spec = {"usad_student": {"kind": "usad", "path": str(models / "usad_student.safetensors"), "target": "hidden_states"},
            "speech_teacher": {"kind": "atst_frame", "path": str(models / "speech_teacher.ckpt"), "target": "hidden_states"},
            "audio_teacher": {"kind": "atst_frame", "path": str(models / "audio_teacher.ckpt"), "target": "hidden_states"}}
    spec = {name: entry for name, entry in spec.items() if Path(entry["path"]).is_file()}  # the student comes last
    spec_file, files_file = work / "models.json", work / "files.json"
    spec_file.write_text(json.dumps(spec))
    files_file.write_text(json.dumps(_test_files(run, count)))
    outs = {}
    for name, env in SETTINGS.items():
        outs[name] = work / f"features-{name.replace(' ', '_')}.npz"
        _run([sys.executable, "-m", "downstream_recipes.demo.repro", "features", str(spec_file), str(files_file),
              str(outs[name])], env, work / f"features-{name.replace(' ', '_')}.log")
    per_model = {}
    for model in spec:
        def read(path: Path, model: str = model) -> dict[str, np.ndarray]:
            return {k: v for k, v in _npz(path).items() if k.startswith(model + "/")}
        per_model[model] = _compare_all(outs, read)
    return {"files": 2 * count, "per model": per_model}


def _student_weights(run_dir: Path) -> dict[str, np.ndarray]:
    import torch

    ckpt = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return {k: v.float().numpy() for k, v in state["student"].items()}


def measure_distillation(run: Path, work: Path, steps: int) -> dict:
    """`steps` optimizer steps of the demo's own distillation config under each setting."""
    precision = "bf16" if native_bf16_cpu() else "fp32"
    settings = {"default": ({}, precision), "default again": ({}, precision), "2 threads": (SETTINGS["2 threads"], precision),
                "ATen avx2": (SETTINGS["ATen avx2"], precision), "fp32 (a CPU without bf16)": ({}, "fp32"),
                "emulated avx2 CPU, fp32": (EMULATED_CPUS["avx2"], "fp32")}
    outs, losses, failed = {}, {}, {}
    for name, (env, prec) in settings.items():
        out = work / f"distill-{name.split(',')[0].replace(' ', '_')}-{prec}"
        shutil.rmtree(out, ignore_errors=True)
        try:
            _run(_usad("distill", "--config", run / "models" / "distill.yaml", f"run_dir={out}", f"train.max_steps={steps}",
                       "train.warmup_steps=1", f"train.ckpt_every={steps}", "train.log_every=1", f"train.precision={prec}"),
                 env, work / f"{out.name}.log")
        except ValueError:
            if name == "default":
                raise
            # a setting this CPU cannot run (e.g. ATen's AVX2 kernels with bf16 on an AMX CPU: torch's
            # attention packs for AMX and refuses): recorded with torch's own message, the rest goes on
            errors = [line.strip() for line in (work / f"{out.name}.log").read_text().splitlines() if "Error" in line]
            failed[name] = {"runs": False, "error": errors[-1] if errors else f"see {work / f'{out.name}.log'}"}
            continue
        outs[name] = out
        import csv

        with open(out / "metrics.csv", newline="") as handle:
            losses[name] = [float(r["loss"]) for r in csv.DictReader(handle)]
    compared = _compare_all(outs, _student_weights)
    for name in compared:
        compared[name]["losses"] = losses[name]
    return {"steps": steps, "precision on this CPU": precision, "default losses": losses["default"],
            "vs default": {name: compared.get(name) or failed[name] for name in settings if name != "default"}}


def _heareval_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(per-class probabilities, predicted class) of each test row."""
    import pickle

    with open(path, "rb") as handle:
        saved = pickle.load(handle)
    probabilities = np.asarray(saved["prediction"])
    return probabilities, probabilities.argmax(1)


def _s3prl_predictions(expdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(file-sorted prediction lines as bytes, predicted label of each file)."""
    lines = sorted((expdir / "test_predict.txt").read_text().splitlines())
    return np.frombuffer("\n".join(lines).encode(), dtype=np.uint8), np.array([line.split(" ", 1)[1] for line in lines])


def _prediction_difference(runs: dict[str, Path], read) -> dict:  # type: ignore[no-untyped-def]
    """Per setting: bitwise equal outputs?, how many test items got another prediction."""
    raw, labels = read(runs["default"])
    out = {}
    for name, path in runs.items():
        if name != "default":
            other_raw, other_labels = read(path)
            out[name] = {"bitwise equal": bool(np.array_equal(raw, other_raw)),
                         "items predicted differently": int((labels != other_labels).sum()), "items": int(len(labels))}
    return out


def measure_probes(run: Path, work: Path) -> dict:
    """One heareval probe (keywords, the student's embeddings) and one s3prl probe (KS, 60 steps)
    of the student, their test predictions compared."""
    embedded = run / "eval" / "hear" / "usad_student" / "embeddings" / "hear_api" / "keywords"
    if not (embedded / ".done.embeddings").exists():
        raise ValueError(f"{embedded}: no student keywords embeddings (run the demo first)")
    hear, superb = {}, {}
    for name, env in SETTINGS.items():
        slug = name.replace(" ", "_")
        target = work / f"hear-{slug}" / "keywords"
        shutil.rmtree(target.parent, ignore_errors=True)
        from downstream_recipes.hear.runner import link_embeddings

        link_embeddings(embedded, target)
        code = ("import sys; from downstream_recipes.hear.runner import heareval_seed; "
                "from usad_upstream.hear import run_predictions_runner\n"
                f"with heareval_seed({HEAREVAL_SEED}): sys.exit(run_predictions_runner([{str(target)!r}, '--grid', 'fast', "
                "'--grid-points', '1']))")
        _run([sys.executable, "-c", code], env, work / f"hear-{slug}.log")
        hear[name] = target / "test.predictions.pkl"
        runs = work / f"superb-{slug}"
        shutil.rmtree(runs, ignore_errors=True)
        _run(_usad("superb", "run", "--task", "KS", "-u", "usad", "-k", run / "models" / "usad_student.safetensors",
                   "--data", run / "corpora" / "speech_commands", "--runs-dir", runs, "--name", "student", "--steps", 60,
                   "--workers", 0, "--device", "cpu", "--feature-cache-mb", 1024, "--seed", S3PRL_SEED,
                   "--override", "config.optimizer.lr=0.001,,config.runner.gradient_accumulate_steps=1"),
             env, work / f"superb-{slug}.log")
        superb[name] = runs / "superb" / "KS" / "student" / f"seed-{S3PRL_SEED}"

    return {f"heareval keywords (fast grid, 1 point, seed {HEAREVAL_SEED})": _prediction_difference(hear, _heareval_predictions),
            f"s3prl KS (60 steps, seed {S3PRL_SEED})": _prediction_difference(superb, _s3prl_predictions)}


def run_repro(args: argparse.Namespace) -> int:
    """`usad demo repro` (its options: downstream_recipes/demo/commands.py)."""
    run = Path(args.run_dir).resolve()
    if not (run / "models" / "distill.yaml").is_file():
        raise ValueError(f"{run}: no demo teachers and distillation config (models/distill.yaml); run `usad demo run` first")
    work = Path(args.work or run / "repro").resolve()
    work.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine({}), "settings": SETTINGS}
    parts = {"features": lambda: measure_features(run, work, args.files),
             "distillation": lambda: measure_distillation(run, work, args.distill_steps),
             "probes": lambda: measure_probes(run, work)}
    for part in args.parts or list(parts):
        print(f"[repro] {part} ...", flush=True)
        report[part] = parts[part]()
        print(json.dumps(report[part], indent=1), flush=True)
    from usad_upstream.checkpoint import atomic_write

    out = Path(args.output)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "features":
    features(Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()), Path(sys.argv[4]))
