"""`make demo` / `usad demo`: USAD in miniature, end to end, through the project's real code paths.

Stages (each a command run as a subprocess, its output in <run>/logs/<stage>.log, its success
recorded atomically in <run>/done/<stage>.json; a rerun skips finished stages, FORCE rebuilds):

  corpora         usad corpora build --size mini (+ the distillation pool at size small)
  speech_teacher  a small ATST-Frame trained on speech TRAINING splits   -> Lightning .ckpt
  audio_teacher   a small ATST-Frame trained on audio TRAINING splits    -> Lightning .ckpt
  distill         usad distill: a tiny USAD student from both teachers on the unlabeled pool and
                  the teachers' training audio (no labels, no dev/test file), at the paper's
                  speech share
  export          usad export -> student.safetensors
  superb-*/hear-* every model x task through usad superb run / usad hear run (s3prl, heareval);
                  the models the targets compare (student, speech and audio teacher) with several
                  probe seeds each, the others with the tools' default seed
  leaderboard     usad leaderboard -> results/demo/leaderboard.{md,html,csv,png} + targets with
                  95% intervals (seeds x test items) and MET / MISSED / INCONCLUSIVE verdicts

Each stage names the stages it needs; `jobs` stages run at a time (one CPU thread each), any
stage whose needs are done may start. So the baselines' and teachers' evaluations run beside the
distillation, which gains only 1.08x from a second thread (measured: 46 vs 50 audio s/s).

Models: fbank (baseline), the speech teacher, the audio teacher, both teachers concatenated
(the paper's "WavLM+ATST" baseline) and the student. Teachers and fbank are read by the generic
teacher adapters (s3prl `usad_teacher`, HEAR `hear_api.teacher`) from small spec files.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from usad_upstream.checkpoint import atomic_write
from usad_upstream.distill.data import PAPER_SPEECH_SHARE

from .targets import STUDENT, targets_report
from .teachers import teacher_training_audio


def _cpuinfo() -> dict[str, str]:
    """/proc/cpuinfo's fields of the first CPU (empty where the file is missing)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def native_bf16_cpu() -> bool:
    """Whether this CPU does bf16 matrix work in hardware (AVX512-BF16 or AMX): there bf16
    autocast trains the demo's student 1.15x faster per step (full run; 1.37x in a 40-step A/B)
    with the same losses to 1e-4; elsewhere it would be emulated, slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


# A CPU without AVX-512, emulated on one that has it (`usad demo run --emulate-cpu avx2`): ATen's
# own kernels, oneDNN and MKL each dispatch on the instruction set, and each is capped here; the
# distillation then runs in fp32, as native_bf16_cpu() would choose on such a CPU.
EMULATED_CPUS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def machine(emulated: "dict[str, str]") -> dict:
    """What a run's numbers depend on beyond the code: CPU kind, instruction sets, torch."""
    import torch

    fields = _cpuinfo()
    flags = sorted(set(fields.get("flags", "").split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"})
    # Family and model tell CPU generations apart where the model name does not (a cloud VM's
    # "AMD EPYC" is Zen 4 at family 25, Zen 5 at family 26).
    return {"cpu": fields.get("model name") or platform.processor(), "family": fields.get("cpu family", ""),
            "model": fields.get("model", ""), "cores": os.cpu_count(), "isa flags": flags,
            "emulated": emulated, "torch": torch.__version__, "host": platform.node()}


AUDIO_FILES = (".wav", ".flac", ".ogg")


def data_fingerprints(run: Path) -> dict[str, str]:
    """Content hashes of the audio a run built before any number (each corpus folder and the
    distillation pool: every audio file's relative path and bytes; datasheets, which carry build
    times, are left out) and of its trained models (as the leaderboard hashes them). Two
    machines' runs that disagree differ in their data or only in their arithmetic: these say which."""
    import hashlib

    from results.manifest import checkpoint_hash  # the leaderboard's checkpoint_hash column

    out = {}
    folders = sorted(p for p in (run / "corpora").glob("*") if p.is_dir()) + sorted(run.glob("pool_*"))
    for folder in folders:
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_FILES and p.is_file()):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
        out[f"audio: {folder.relative_to(run)}"] = digest.hexdigest()[:12]
    for model in sorted((run / "models").glob("*")):
        if model.suffix in (".ckpt", ".safetensors", ".pt"):
            out[f"model: {model.name}"] = checkpoint_hash(model)
    return out


REPO = Path(__file__).resolve().parents[2]
# Peak LR of the distillation, by training loss on the demo's 1150-step schedule (run 10's teachers,
# data and seed; loss logged at step 1083): 1e-3 0.552, 2e-3 0.538, 3e-3 0.542, 4e-3 0.550; at
# step 1150 2e-3 is also lower on the speech teacher's top layer (0.519 vs 0.536 for 1e-3).
DISTILL_LR = 2e-3
# Shortest clip the student distils on. The paper's 2 s floor is for sound and music cut from
# 10 s clips; spoken commands are shorter: at 1 s the demo skipped 144 of the 520 Fluent Speech
# Commands training utterances (0.54-1 s): the student never heard them.
DISTILL_MIN_SECONDS = 0.5
# Per-file feature cache of the SUPERB probes' frozen upstreams (usad, usad_teacher): each file's
# features are computed once instead of every epoch (student IC probe: 124 s -> 39 s, same scores).
SUPERB_FEATURE_CACHE_MB = 1024
# Probe seeds: seed k is the tools' default + k (s3prl's run_downstream 1337, heareval 42), so the
# first seed is the one every run before seeds used.
S3PRL_SEED, HEAREVAL_SEED = 1337, 42
# The models whose scores decide a target get Budget.probe_seeds seeds; fbank and the concatenated
# teachers decide nothing and get the first seed only.
DECIDING = ("speech_teacher", "audio_teacher", "usad_student")


class StageError(ValueError):
    """A stage failed; the message names it and its log file."""


@dataclass(frozen=True)
class Budget:
    """Everything that makes QUICK quick. No number here was chosen by looking at test scores."""

    corpora_size: str
    pool_size: str  # size of the distillation pool ("mini" reuses the corpora's own)
    speech_teacher: tuple[int, int]  # (steps, clips per step)
    audio_teacher: tuple[int, int]
    distill_steps: int
    distill_batch_seconds: float
    superb_steps: dict[str, int]  # SUPERB task -> downstream training steps (the tasks run)
    # Learning rate for the utterance tasks, whose SUPERB recipes use 1e-4 over 200k steps: 10x
    # that for runs ~1000x shorter. PR keeps its recipe's 1e-2.
    superb_lr: float
    # One batch per update instead of the recipes' 2 (PR) or 4 (SID): the frozen upstream's
    # forward is most of a step's cost on CPU, so this halves / quarters those runs.
    superb_accumulate: int
    hear_tasks: tuple[str, ...]
    hear_grid: str
    hear_grid_points: int  # heareval tries this many points of the grid per task (its default: 8)
    probe_seeds: int  # seeds per probe of the models that decide a target


# SUPERB steps: probes long enough that dev scores have stopped rising, read from dev curves only
# (run 13's models, 4x the steps, 16 dev evaluations, no test stage): at 150 steps the IC probes
# were still rising (speech teacher 58.7 -> ~65, student 55.3 -> ~61 by step ~450, both flat or
# falling after), as were the audio teacher's KS and every SID probe; PR's dev PER is best within
# its 200 steps at the recipe's 1e-2 and then worsens. The feature cache makes the longer probes
# cheaper than the old ones.
FULL = Budget(
    corpora_size="mini", pool_size="small", speech_teacher=(1500, 8), audio_teacher=(1500, 16),
    distill_steps=1150, distill_batch_seconds=32.0,
    superb_steps={"PR": 200, "KS": 600, "SID": 600, "IC": 600}, superb_lr=1e-3, superb_accumulate=1,
    hear_tasks=("keywords", "pitch", "instrument_family", "drums", "event_detection"), hear_grid="fast",
    hear_grid_points=4, probe_seeds=3,
)
# A smoke run of every stage: two SUPERB tasks instead of four, heareval's smallest grid.
QUICK = Budget(
    corpora_size="mini", pool_size="mini", speech_teacher=(40, 6), audio_teacher=(60, 8),
    distill_steps=40, distill_batch_seconds=16.0,
    superb_steps={"PR": 20, "KS": 20}, superb_lr=1e-3, superb_accumulate=1,
    hear_tasks=("keywords", "pitch", "drums", "event_detection"), hear_grid="faster",
    hear_grid_points=4, probe_seeds=2,  # exercises the seeds and intervals; its verdicts mean nothing anyway
)

SUPERB_DATA = {"PR": "LibriSpeech", "KS": "speech_commands", "SID": "VoxCeleb1", "IC": "fluent_speech_commands",
               "ER": "IEMOCAP_full_release", "ASR": "LibriSpeech", "SD": "librimix_sd", "SF": "SNIPS",
               "ASV": "VoxCeleb1_sv", "QbE": "quesst14Database"}
# Evaluation suites: "demo" is `make demo`; "full" (`usad demo run --suite full`) also probes the
# same five models on the other six SUPERB tasks, from extra corpora stages built into the same
# folder. Per task: (steps, QUICK steps, s3prl -o overrides on top of the demo's lr and
# accumulation). CPU budgets, fixed before these tasks ever ran on the demo's models, from
# their cost per step with a tiny USAD on the mini corpora: ASR and SF get a 2 x 256 BLSTM head
# and batch 8 (SUPERB: 2 x 1024, batch 32, tens of CPU-seconds a step; this: about 3), ASV batch
# 16 (SUPERB: 256; batch 32 cost about 10 CPU-seconds a step). QbE trains nothing.
_SMALL_RNN = "config.downstream_expert.{m}.project_dim=256,,config.downstream_expert.{m}.RNNs.dim=[256,256]"
SUITES: dict[str, dict[str, tuple[int, int, tuple[str, ...]]]] = {
    "demo": {},
    "full": {
        "ASR": (100, 10, (_SMALL_RNN.format(m="modelrc"), "config.downstream_expert.datarc.train_batch_size=8")),
        "SF": (100, 10, (_SMALL_RNN.format(m="model"), "config.downstream_expert.corpus.batch_size=8")),
        "ASV": (40, 4, ("config.downstream_expert.datarc.train_batch_size=16",)),
        "SD": (300, 10, ()),
        "ER": (600, 20, ()),
        "QbE": (0, 0, ()),
    },
}
BASE_CORPORA = ("librispeech", "speech_commands", "voxceleb1", "fluent_speech_commands", "hear", "pool")
SUITE_CORPORA = {"demo": (), "full": ("iemocap", "librimix_sd", "voxceleb1_sv", "snips", "quesst14")}
MODELS = ("fbank", "speech_teacher", "audio_teacher", "teachers_concat", "usad_student")
# fbank (the floor) and the concatenated teachers (the ceiling of a free combination) decide no
# target; a full run evaluates them only with --baselines. With three probe seeds per deciding
# model they cost 845 of 5078 CPU-seconds and took the run to 51.6 min (run 17), over make demo's
# 40. QUICK keeps all five so that every stage's code path stays under test.
BASELINES = ("fbank", "teachers_concat")


@dataclass
class Stage:
    name: str
    command: list[str]
    outputs: list[Path] = field(default_factory=list)  # must exist after success
    env: dict[str, str] = field(default_factory=dict)
    # Results of an earlier run, removed when a stage it needs was rebuilt (else left for the
    # tool's own resumption: the distillation trainer and the SUPERB/HEAR runners resume).
    clean: list[Path] = field(default_factory=list)
    needs: tuple[str, ...] = ()  # stages that must have finished first
    # A failed essential stage stops the pipeline; a failed evaluation leaves a gap in the
    # leaderboard (reported at the end) and the other evaluations go on.
    essential: bool = True
    prepare: "Callable[[], object] | None" = None  # writes the stage's inputs just before it starts


class Demo:
    """The demo's run directory and its stages."""

    def __init__(self, run_dir: Path, results_dir: Path, quick: bool = False, force: bool = False,
                 jobs: int = 2, python: str = sys.executable, log: Callable[[str], None] = print,
                 emulate_cpu: "str | None" = None, distill_overrides: tuple[str, ...] = (),
                 models: "tuple[str, ...] | None" = None, evaluate_dev: bool = False,
                 suite: str = "demo") -> None:
        if suite not in SUITES:
            raise ValueError(f"unknown demo suite {suite!r}; expected one of {list(SUITES)}")
        self.suite = suite
        self.run = Path(run_dir).resolve()
        self.results = Path(results_dir).resolve()
        self.quick, self.force, self.jobs, self.python, self.say = quick, force, max(1, jobs), python, log
        self.budget = QUICK if quick else FULL
        if emulate_cpu is not None and emulate_cpu not in EMULATED_CPUS:
            raise ValueError(f"--emulate-cpu must be one of {sorted(EMULATED_CPUS)}, got {emulate_cpu!r}")
        self.emulated = EMULATED_CPUS.get(emulate_cpu or "", {})  # environment of every stage
        # bf16 autocast, as the paper trains, where the CPU does bf16 in hardware
        self.distill_precision = "bf16" if native_bf16_cpu() and not self.emulated else "fp32"
        # An experiment on the recipe: dotted overrides of the distillation config (recorded with
        # the results), the models to evaluate, and per-item dev predictions of the SUPERB probes.
        self.distill_overrides, self.evaluate_dev = tuple(distill_overrides), evaluate_dev
        models = models or (MODELS if quick else DECIDING)
        unknown = sorted(set(models) - set(MODELS))
        if unknown or not models:
            raise ValueError(f"--model: unknown model(s) {unknown or models}; choose from {list(MODELS)}")
        self.model_names = tuple(m for m in MODELS if m in models)  # the models evaluated
        self.corpora = self.run / "corpora"
        self.models = self.run / "models"
        self.logs = self.run / "logs"
        self.done = self.run / "done"
        # Seconds each stage took when it ran (wall clock, and CPU time of the stage's processes:
        # on a shared machine the wall clock measures the neighbours too); a rerun keeps those of
        # the stages it skips, so the leaderboard's times are those of the runs that made its scores.
        self.timings: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.reused: list[str] = []  # stages done by an earlier invocation
        self.began = time.time()
        # Stages really run in this invocation: a stage needing one of them reruns too (its
        # inputs changed), after its stale results are cleaned.
        self.rebuilt: set[str] = set()

    # ------------------------------------------------------------------ bookkeeping
    def usad(self, *args: object) -> list[str]:
        return [self.python, "-m", "downstream_recipes.cli", *map(str, args)]

    def marker(self, stage: str) -> Path:
        return self.done / f"{stage}.json"

    def recorded_seconds(self, stage: str) -> float:
        return float(json.loads(self.marker(stage).read_text())["seconds"])

    def recorded_cpu_seconds(self, stage: str) -> "float | None":
        return json.loads(self.marker(stage).read_text()).get("cpu seconds")

    def is_stale(self, stage: Stage) -> bool:
        return any(need in self.rebuilt for need in stage.needs)

    def is_done(self, stage: Stage) -> bool:
        return not self.is_stale(stage) and self.marker(stage.name).is_file() and all(p.exists() for p in stage.outputs)

    def start(self, stage: Stage) -> subprocess.Popen:
        log = self.logs / f"{stage.name}.log"
        self.marker(stage.name).unlink(missing_ok=True)
        for path in stage.clean if self.is_stale(stage) else []:
            shutil.rmtree(path, ignore_errors=True)
        self.rebuilt.add(stage.name)
        if stage.prepare is not None:
            stage.prepare()
        # OpenMP threads that spin while waiting multiply the run time many times over on a busy
        # 2-core machine (measured: 15x for a student step); passive waiting costs nothing when idle.
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, **self.emulated, **stage.env, "PYTHONUNBUFFERED": "1"}
        handle = open(log, "w")
        handle.write(f"$ {' '.join(stage.command)}\n")
        handle.flush()
        proc = subprocess.Popen(stage.command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        proc._demo = (stage, log, handle, time.time())  # type: ignore[attr-defined]
        return proc

    @staticmethod
    def reap(proc: subprocess.Popen) -> bool:
        """Whether `proc` has ended; if so, its CPU seconds (with the children it waited for,
        the s3prl and heareval processes) are kept in proc._cpu."""
        if proc.returncode is not None:
            return True
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc._cpu = round(usage.ru_utime + usage.ru_stime, 1)  # type: ignore[attr-defined]
        return True

    def finish(self, proc: subprocess.Popen) -> "str | None":
        """Record a finished process; returns an error message or None."""
        stage, log, handle, began = proc._demo  # type: ignore[attr-defined]
        handle.close()
        seconds = round(time.time() - began, 1)
        cpu = getattr(proc, "_cpu", None)
        self.timings[stage.name] = seconds
        self.cpu_seconds[stage.name] = cpu
        missing = [str(p) for p in stage.outputs if not p.exists()]
        if proc.returncode != 0 or missing:
            why = f"exit status {proc.returncode}" if proc.returncode != 0 else f"missing output {missing}"
            return f"demo stage '{stage.name}' failed ({why}); see {log}"
        record = {"seconds": seconds, "cpu seconds": cpu, "finished": time.time()}
        atomic_write(self.marker(stage.name), lambda tmp: Path(tmp).write_text(json.dumps(record)))
        self.say(f"[demo] {stage.name}: done in {seconds:.0f} s ({cpu} CPU s)")
        return None

    def run_stages(self, stages: list[Stage]) -> list[str]:
        """Run the stages, `jobs` at a time (one CPU thread each when jobs > 1), each as soon as
        the stages it needs are done; the earliest-listed ready stage starts first. Returns the
        failed evaluations' messages; a failed essential stage stops everything and raises."""
        names = {s.name for s in stages}
        unknown = sorted({n for s in stages for n in s.needs} - names)
        if unknown:
            raise ValueError(f"demo stages need unknown stage(s) {unknown}")
        threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if self.jobs > 1 else {}
        pending, running, finished, failed, errors = list(stages), [], set(), set(), []
        while pending or running:
            for stage in [s for s in pending if failed & set(s.needs)]:
                pending.remove(stage)
                failed.add(stage.name)
                errors.append(f"demo stage '{stage.name}' skipped: it needs failed stage(s) {sorted(failed & set(stage.needs))}")
            # Stages done by an earlier invocation first, to a fixed point, so that a resumed run
            # starts the stages they unblock (the distillation) before any evaluation.
            skipped = True
            while skipped:
                skipped = False
                for stage in [s for s in pending if set(s.needs) <= finished and self.is_done(s)]:
                    pending.remove(stage)
                    finished.add(stage.name)
                    self.timings[stage.name] = self.recorded_seconds(stage.name)
                    self.cpu_seconds[stage.name] = self.recorded_cpu_seconds(stage.name)
                    self.reused.append(stage.name)
                    self.say(f"[demo] {stage.name}: already done (took {self.timings[stage.name]:.0f} s), skipping")
                    skipped = True
            for stage in [s for s in pending if set(s.needs) <= finished]:
                if len(running) < self.jobs:
                    pending.remove(stage)
                    stage.env.update(threads)
                    self.say(f"[demo] {stage.name}: running (log: {self.logs / (stage.name + '.log')})")
                    running.append(self.start(stage))
            if pending and not running and not any(set(s.needs) <= finished for s in pending):
                raise ValueError(f"demo stages wait on each other: {[s.name for s in pending]}")
            time.sleep(0.2 if running else 0.0)
            for proc in [p for p in running if self.reap(p)]:
                running.remove(proc)
                stage = proc._demo[0]  # type: ignore[attr-defined]
                error = self.finish(proc)
                if error is None:
                    finished.add(stage.name)
                elif stage.essential:
                    for other in running:
                        other.terminate()
                        other.wait()
                        other._demo[2].close()  # type: ignore[attr-defined]
                    raise StageError(error)
                else:
                    self.say(f"[demo] {error}")
                    failed.add(stage.name)
                    errors.append(error)
        return errors

    def projected_seconds(self, stages: list[Stage], seconds: "dict[str, float | None]") -> "float | None":
        """Wall time of `stages` on an idle machine with `jobs` cores: each stage's measured CPU
        seconds (one thread each) scheduled as run_stages schedules them. On a shared machine the
        wall clock measures the neighbours too; this is what the demo itself costs. None when a
        stage has no CPU time recorded."""
        if any(seconds.get(s.name) is None for s in stages):
            return None
        pending, running, done, now = list(stages), [], set(), 0.0  # running: (end time, name)
        while pending or running:
            for stage in [s for s in pending if set(s.needs) <= done]:
                if len(running) < self.jobs:
                    pending.remove(stage)
                    running.append((now + float(seconds[stage.name] or 0.0), stage.name))
            if not running:
                raise ValueError(f"demo stages wait on each other: {[s.name for s in pending]}")
            now, name = min(running)
            running.remove((now, name))
            done.add(name)
        return now

    # ------------------------------------------------------------------ stages
    def write_specs(self) -> dict[str, Path]:
        """Teacher spec files read by the `usad_teacher` s3prl upstream and `hear_api.teacher`."""
        speech = {"kind": "atst_frame", "path": str(self.models / "speech_teacher.ckpt")}
        audio = {"kind": "atst_frame", "path": str(self.models / "audio_teacher.ckpt")}
        specs = {
            # fbank pooled to the student's 50 Hz: heareval's event-detection scoring grows with the
            # frame count and took 7.5 of the demo's 40 minutes at fbank's own 100 Hz.
            "fbank": {"teachers": [{"kind": "s3prl", "name": "fbank"}], "frame_rate": 50},
            "speech_teacher": {"teachers": [speech]},
            "audio_teacher": {"teachers": [audio]},
            # both teachers run at 25 Hz, so they concatenate at their own rate (the paper's WavLM +
            # ATST-Frame meet at WavLM's 50 Hz; repeating frames here would only double the cost)
            "teachers_concat": {"teachers": [speech, audio]},
        }
        paths = {}
        for name, spec in specs.items():
            path = self.models / f"{name}.yaml"
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            paths[name] = path
        return paths

    def distill_config(self) -> Path:
        pool = self.corpora / "pool" / "manifest.tsv"
        if self.budget.pool_size != "mini":
            pool = self.run / f"pool_{self.budget.pool_size}" / "pool" / "manifest.tsv"
        # The pool plus the teachers' training audio, unlabeled (the paper distils on LibriSpeech,
        # whose train split the SUPERB probes also use); no dev or test file is in either.
        seen = teacher_training_audio(self.corpora, self.models / "teacher_training_audio.tsv")
        # speech_share: the paper's speech : sound + music ratio (Mix126k-B), whatever the pool's own
        # make-up; the trainer turns it into domain weights and prints them in the distill log.
        data = {"manifests": [str(pool), str(seen)], "speech_share": PAPER_SPEECH_SHARE, "max_seconds": 4.0,
                "min_seconds": DISTILL_MIN_SECONDS, "crop": "random", "num_workers": 0}
        config = {
            "run_dir": str(self.models / "distill"),
            "model": {"size": "tiny"},
            "teachers": {
                "speech": {"kind": "atst_frame", "path": str(self.models / "speech_teacher.ckpt"), "target": "ffn", "weight": 1.0},
                "audio": {"kind": "atst_frame", "path": str(self.models / "audio_teacher.ckpt"), "target": "ffn", "weight": 1.0},
            },
            "objective": {"num_layers": 4, "head_hidden": None},
            "data": data,
            "train": {"lr": DISTILL_LR, "warmup_steps": max(1, self.budget.distill_steps // 10),
                      "max_steps": self.budget.distill_steps, "batch_seconds": self.budget.distill_batch_seconds,
                      "device": "cpu", "precision": self.distill_precision, "log_every": max(1, self.budget.distill_steps // 20),
                      "ckpt_every": max(1, self.budget.distill_steps // 4), "keep_last": 1, "seed": 0},
        }
        from usad_upstream.distill.config import apply_override

        for override in self.distill_overrides:
            apply_override(config, override)
        path = self.models / "distill.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def stages(self) -> list[Stage]:
        """Every stage with what it needs, in start priority: the path to the student first (the
        distillation is the longest stage), then the student's evaluations (ready last, longest
        first), then the other models' evaluations, which fill the second core meanwhile."""
        b = self.budget
        stages = [a for stage in BASE_CORPORA for a in ("--stage", stage)]
        builds = [Stage("corpora", self.usad("corpora", "build", "--out", self.corpora, "--size", b.corpora_size, *stages),
                        [self.corpora / "pool" / "manifest.tsv", self.corpora / "hear" / "tasks"])]
        suite_corpora = []  # into the same folder, after the teachers start; they and the student never see them
        if SUITE_CORPORA[self.suite]:
            extra = [a for stage in SUITE_CORPORA[self.suite] for a in ("--stage", stage)]
            from downstream_recipes.corpora.build import STAGES as CORPUS_STAGES

            folders = [self.corpora / CORPUS_STAGES[stage][0] for stage in SUITE_CORPORA[self.suite]]
            suite_corpora.append(Stage("corpora_full", self.usad("corpora", "build", "--out", self.corpora, "--size",
                                                                 b.corpora_size, *extra), folders, needs=("corpora",)))
        if b.pool_size != "mini":
            out = self.run / f"pool_{b.pool_size}"
            builds.append(Stage("pool", self.usad("corpora", "build", "--out", out, "--size", b.pool_size, "--stage", "pool"),
                                [out / "pool" / "manifest.tsv"]))
        teachers = []
        for kind, (steps, batch) in (("speech", b.speech_teacher), ("audio", b.audio_teacher)):
            out = self.models / f"{kind}_teacher.ckpt"
            teachers.append(Stage(f"{kind}_teacher", self.usad("demo", "teacher", kind, "--corpora", self.corpora, "-o", out,
                                                                "--steps", steps, "--batch", batch), [out], needs=("corpora",)))
        student = self.models / "usad_student.safetensors"
        distill = Stage("distill", self.usad("distill", "--config", self.models / "distill.yaml"),
                        [self.models / "distill" / "checkpoints"], clean=[self.models / "distill"],
                        needs=tuple(s.name for s in builds + teachers), prepare=self.distill_config)
        export = Stage("export", self.usad("export", self.models / "distill", "-o", student), [student], needs=("distill",))
        evals = self.eval_stages(student)
        student_evals = [s for s in evals if s.name.endswith("usad_student")]
        return (builds + teachers + [distill, export] + suite_corpora + student_evals
                + [s for s in evals if s not in student_evals])

    def eval_models(self, student: Path) -> dict[str, tuple[list, list, tuple[str, ...]]]:
        """Each evaluated model -> (its s3prl upstream arguments, its HEAR module arguments, the
        stages it needs). Direct needs only: a rebuilt corpus reruns the teachers and the student,
        hence these too."""
        specs = self.write_specs()
        needs = {"fbank": ("corpora",), "speech_teacher": ("speech_teacher",), "audio_teacher": ("audio_teacher",),
                 "teachers_concat": ("speech_teacher", "audio_teacher"), "usad_student": ("export",)}
        models = {}
        for model in self.model_names:
            if model == "fbank":
                upstream: list[object] = ["--upstream", "fbank"]
            elif model == "usad_student":
                upstream = ["--upstream", "usad", "-k", student]
            else:
                upstream = ["--upstream", "usad_teacher", "-k", specs[model]]
            if model == "usad_student":
                module: list[object] = ["--module", "hear_api", "--model", student]
            else:
                module = ["--module", "hear_api.teacher", "--model", specs[model]]
            models[model] = (upstream, module, needs[model])
        return models

    def seeds(self, model: str) -> range:
        """Seed offsets of a model's probes: several for the models a target compares."""
        return range(self.budget.probe_seeds if model in DECIDING else 1)

    def eval_stages(self, student: Path) -> list[Stage]:
        """Every model x task run: HEAR first, then SUPERB in the budget's task order (the longer
        jobs first, so the two slots finish close together)."""
        b = self.budget
        models = self.eval_models(student)
        runs = self.run / "eval"
        hear, superb = [], []
        tasks = {t: (n, ()) for t, n in b.superb_steps.items()}
        suite = SUITES[self.suite]
        tasks.update({t: (quick if self.quick else steps, extra) for t, (steps, quick, extra) in suite.items()})
        for task, (steps, extra) in tasks.items():
            trains = steps > 0  # QbE: no probe to train
            for model, (upstream, _, needs) in models.items():
                overrides = [f"config.runner.gradient_accumulate_steps={b.superb_accumulate}"] if trains else []
                if task != "PR" and trains:
                    overrides.append(f"config.optimizer.lr={b.superb_lr}")
                overrides += extra
                seeds = [a for k in self.seeds(model) for a in ("--seed", S3PRL_SEED + k)]
                cmd = self.usad("superb", "run", "--task", task, *upstream, "--data", self.corpora / SUPERB_DATA[task],
                                "--name", model, "--runs-dir", runs, "--steps", steps, "--workers", 0, "--device", "cpu",
                                *(["--override", ",,".join(overrides)] if overrides else []),
                                "--feature-cache-mb", SUPERB_FEATURE_CACHE_MB, *seeds,
                                *(["--evaluate-dev"] if self.evaluate_dev else []))
                superb.append(Stage(f"superb-{task}-{model}", cmd, clean=[runs / "superb" / task / model],
                                    needs=needs + (("corpora_full",) if task in suite else ()), essential=False))
        for model, (_, module, needs) in models.items():
            tasks = [a for t in b.hear_tasks for a in ("--task", t)]
            seeds = [a for k in self.seeds(model) for a in ("--seed", HEAREVAL_SEED + k)]
            cmd = self.usad("hear", "run", *module, "--tasks-dir", self.corpora / "hear" / "tasks", *tasks,
                            "--grid", b.hear_grid, "--grid-points", b.hear_grid_points, "--runs-dir", runs, "--name", model,
                            *seeds)
            hear.append(Stage(f"hear-{model}", cmd, clean=[runs / "hear" / model], needs=needs, essential=False))
        return hear + superb

    title = "USAD demo (measured here, miniature)"

    def leaderboard(self) -> dict[str, Path]:
        stage = Stage("leaderboard", self.usad("leaderboard", self.run / "eval", "-o", self.results, "--published", "none",
                                               "--title", self.title))
        log = self.logs / "leaderboard.log"
        self.say(f"[demo] leaderboard: running (log: {log})")
        proc = self.start(stage)
        while not self.reap(proc):
            time.sleep(0.1)
        error = self.finish(proc)
        if error:
            raise StageError(error)
        return self.report()

    def report(self) -> dict[str, Path]:
        """The claim checked on the leaderboard's numbers, appended to it."""
        return targets_report(self.run / "eval", self.results, self.budget_summary())

    def budget_summary(self) -> dict:
        b = self.budget
        return {"mode": "QUICK" if self.quick else "full", **({"suite": self.suite} if self.suite != "demo" else {}),
                "corpora": b.corpora_size, "pool": b.pool_size,
                "speech teacher steps x clips": list(b.speech_teacher), "audio teacher steps x clips": list(b.audio_teacher),
                "distill steps": b.distill_steps, "distill batch seconds": b.distill_batch_seconds, "distill lr": DISTILL_LR,
                "distill min clip seconds": DISTILL_MIN_SECONDS,
                "distill precision": self.distill_precision,
                "distill speech share (the paper's Mix126k-B)": round(PAPER_SPEECH_SHARE, 4),
                "distill overrides (an experiment)": list(self.distill_overrides),
                "SUPERB steps": b.superb_steps, "SUPERB feature cache MB": SUPERB_FEATURE_CACHE_MB,
                "SUPERB lr": b.superb_lr, "SUPERB gradient accumulation": b.superb_accumulate,
                "HEAR grid": f"{b.hear_grid} ({b.hear_grid_points} points)",
                "probe seeds": {"models": list(DECIDING), "SUPERB (run_downstream --seed)": [S3PRL_SEED + k for k in self.seeds(STUDENT)],
                                "HEAR (heareval's seed_everything)": [HEAREVAL_SEED + k for k in self.seeds(STUDENT)],
                                "other models": [S3PRL_SEED, HEAREVAL_SEED]},
                "machine": machine(self.emulated), "data and models (sha256)": data_fingerprints(self.run),
                "invocation seconds": round(time.time() - self.began, 1), "stages done by an earlier invocation": self.reused,
                f"projected seconds on an idle {self.jobs}-core machine": self.projected_seconds(self.stage_list, self.cpu_seconds),
                "stage seconds": self.timings, "stage CPU seconds": self.cpu_seconds}

    def __call__(self) -> dict[str, Path]:
        if self.force and self.run.exists():
            shutil.rmtree(self.run)
        for d in (self.corpora, self.models, self.logs, self.done):
            d.mkdir(parents=True, exist_ok=True)
        self.began = time.time()
        stages = self.stage_list = self.stages()
        errors = self.run_stages(stages)
        paths = self.leaderboard()
        total = round(time.time() - self.began, 1)
        projected = self.projected_seconds(stages, self.cpu_seconds)
        record = {"stage seconds": self.timings, "stage CPU seconds": self.cpu_seconds, "this invocation's seconds": total,
                  f"projected seconds on an idle {self.jobs}-core machine": None if projected is None else round(projected, 1),
                  "stages done by an earlier invocation": self.reused, "machine": machine(self.emulated)}
        atomic_write(self.run / "timings.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
        self.say(f"[demo] finished in {total / 60:.1f} min; leaderboard: {paths['md']}")
        if errors:
            raise StageError(f"{len(errors)} evaluation stage(s) failed (gaps in the leaderboard): " + "; ".join(errors))
        return paths
