"""Two small domain teachers with real, different knowledge, trained here on TRAINING splits only.

Both use the ATST-Frame encoder architecture (usad_upstream.teachers.atst: 64-mel fbank, 25 Hz
tokens) with a small config and are saved as ATST-Frame Lightning .ckpt files (encoder under
model.teacher.encoder.*); what they know comes only from their data:

- Speech teacher: trained multi-task on the LibriSpeech-format train split (phoneme CTC through
  the lexicon), the Speech Commands-format training list (keywords), VoxCeleb1-format
  identification split 1 (speakers) and Fluent Speech Commands-format train_data.csv (intents).
- Audio teacher: trained on the train splits of the HEAR-format tasks pitch, instrument_family,
  drums (clip labels) and event_detection (frame labels).

Why not a WavLM-architecture speech teacher: WavLM's waveform CNN made a training step ~4x slower
on one CPU thread than the fbank frontend, and it learned no faster per step. A 240-step WavLM
teacher (layer-norm CNN) gave chance-level SID and IC probes; the last try (group-norm CNN,
pre-norm, 4 x 192, 480 steps x 8 clips, 426 s) still ended at speaker loss 3.42 (chance 3.87)
with phoneme CTC on the all-blank plateau (3.46). WavLM checkpoints are still exercised by the
tests and `usad bench`.

Neither teacher sees a dev/valid/test file of any task, nor the distillation pool. Both are
loaded afterwards only through the project's real loader (build_teacher), like released weights.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from usad_upstream.checkpoint import atomic_write
from usad_upstream.teachers.atst import PREFIX, ATSTConfig, ATSTFrameEncoder, ATSTFrontend
from usad_upstream.teachers.base import frame_mask

log = logging.getLogger(__name__)
SR = 16000

MAX_CTC_SECONDS = 10.0
SMALL_ATST = ATSTConfig(dim=192, depth=4, heads=3, mlp_dim=768)


@dataclass(frozen=True)
class TeacherBudget:
    """Training length of one teacher: optimizer steps and clips per step."""

    steps: int
    batch: int
    lr: float = 1e-3
    max_seconds: float = 6.0  # longer clips are randomly cropped (CTC items are never cropped)


# ----------------------------------------------------------------------------- data
@dataclass
class ClipTask:
    """One supervised task: (audio path, target) pairs and how to score a batch."""

    name: str
    items: list  # (path, target)
    num_classes: int
    kind: str  # "ctc" | "clip" | "frames"
    share: int = 1  # steps per round-robin cycle


def _read(path: str, max_samples: "int | None", rng: random.Random) -> np.ndarray:
    wav, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != SR:
        raise ValueError(f"{path}: sample rate {sr}, expected {SR}")
    wav = wav.mean(axis=1)
    if max_samples and len(wav) > max_samples:
        start = rng.randrange(len(wav) - max_samples + 1)
        wav = wav[start : start + max_samples]
    return wav


def _batch(wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(w) for w in wavs])
    out = torch.zeros(len(wavs), int(lens.max()))
    for i, w in enumerate(wavs):
        out[i, : len(w)] = torch.from_numpy(w)
    return out, lens


def speech_tasks(corpora: Path) -> list[ClipTask]:
    """The speech teacher's training data from the SUPERB-format corpora (training splits only)."""
    from ..corpora.speech_commands import KEYWORDS, which_set

    tasks = []
    ls = corpora / "LibriSpeech"
    lexicon = {}
    for line in (ls / "lexicon.txt").read_text().splitlines():
        word, _, phones = line.partition("\t") if "\t" in line else line.partition(" ")
        lexicon.setdefault(word.strip().upper(), phones.split())
    phones = [p.strip() for p in (ls / "phoneme.txt").read_text().splitlines() if p.strip()]
    index = {p: i + 1 for i, p in enumerate(phones)}  # 0 is the CTC blank
    items = []
    for trans in sorted((ls / "train-clean-100").rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt, _, text = line.partition(" ")
            seq = [index[p] for w in text.split() for p in lexicon.get(w.upper(), []) if p in index]
            audio = next((p for p in (trans.parent / f"{utt}.flac", trans.parent / f"{utt}.wav") if p.is_file()), None)
            # CTC items are never cropped, and ATST-Frame's position table covers 10 s.
            if seq and audio is not None and sf.info(str(audio)).duration <= MAX_CTC_SECONDS:
                items.append((str(audio), seq))
    tasks.append(ClipTask("phonemes", items, len(phones) + 1, "ctc", share=3))  # CTC learns slowest

    root = corpora / "speech_commands" / "speech_commands_v0.01"
    labels = list(KEYWORDS) + ["_unknown_", "_silence_"]
    items = []
    for wav in sorted(root.glob("*/*.wav")):
        if wav.parent.name == "_background_noise_" or which_set(wav.name) != "training":
            continue
        items.append((str(wav), labels.index(wav.parent.name if wav.parent.name in KEYWORDS else "_unknown_")))
    tasks.append(ClipTask("keywords", items, len(labels), "clip"))

    vox = corpora / "VoxCeleb1"
    rows = [line.split() for line in (vox / "iden_split.txt").read_text().splitlines() if line.strip()]
    speakers = sorted({r[1].split("/")[0] for r in rows})
    wav_dirs = [d for d in vox.glob("*/wav") if d.is_dir()]
    items = []
    for split, rel in rows:
        if split != "1":
            continue
        path = next((d / rel for d in wav_dirs if (d / rel).is_file()), None)
        if path is not None:
            items.append((str(path), speakers.index(rel.split("/")[0])))
    tasks.append(ClipTask("speakers", items, len(speakers), "clip"))

    fsc = corpora / "fluent_speech_commands"
    with open(fsc / "data" / "train_data.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    intents = sorted({(r["action"], r["object"], r["location"]) for r in rows})
    items = [(str(fsc / r["path"]), intents.index((r["action"], r["object"], r["location"]))) for r in rows]
    tasks.append(ClipTask("intents", items, len(intents), "clip"))
    for task in tasks:
        if not task.items:
            raise ValueError(f"speech teacher: no training items for {task.name} under {corpora}")
    return tasks


# The audio teacher's HEAR tasks by domain: USAD 2.0's miniature (downstream_recipes/demo/usad2.py)
# trains a sound and a music teacher on them separately.
SOUND_TASKS = ("event_detection",)
MUSIC_TASKS = ("pitch", "instrument_family", "drums")


def audio_tasks(corpora: Path, names: "tuple[str, ...]" = MUSIC_TASKS + SOUND_TASKS) -> list[ClipTask]:
    """The audio teacher's training data: train splits of HEAR-format tasks (no k-fold task)."""
    tasks_dir = corpora / "hear" / "tasks"
    tasks = []
    for name in names:
        task_dir = tasks_dir / name
        vocab = [row["label"] for row in csv.DictReader(open(task_dir / "labelvocabulary.csv"))]
        labels = json.loads((task_dir / "train.json").read_text())
        audio = task_dir / "16000" / "train"
        if name == "event_detection":
            items = [(str(audio / f), [(vocab.index(e["label"]), e["start"], e["end"]) for e in ev]) for f, ev in sorted(labels.items())]
            tasks.append(ClipTask(name, items, len(vocab), "frames"))
        else:
            items = [(str(audio / f), vocab.index(lab[0])) for f, lab in sorted(labels.items())]
            tasks.append(ClipTask(name, items, len(vocab), "clip"))
    return tasks


# Domain of each audio teacher task's clips in a distillation manifest.
AUDIO_TASK_DOMAINS = {"pitch": "music", "instrument_family": "music", "drums": "music", "event_detection": "sound"}


def teacher_training_audio(corpora: Path, out: Path) -> Path:
    """A distillation manifest of the audio both teachers were trained on, without its labels:
    the training splits only (as the paper distils on LibriSpeech, whose train split SUPERB's
    probes also use); no dev or test file."""
    from usad_upstream.distill.data import build_manifest, write_manifest

    groups = [("speech", speech_tasks(corpora))] + [(AUDIO_TASK_DOMAINS[t.name], [t]) for t in audio_tasks(corpora)]
    entries = []
    for domain, tasks in groups:
        files = sorted({path for task in tasks for path, _ in task.items})
        found, skipped = build_manifest(files, domain)
        if skipped:
            raise ValueError(f"teacher training audio under {corpora}: {dict(skipped)} unreadable or empty {domain} files")
        entries += found
    return write_manifest(entries, out)


# ----------------------------------------------------------------------------- models
class Heads(nn.Module):
    """One linear head per task on the encoder's last layer (mean-pooled for clip tasks)."""

    def __init__(self, dim: int, tasks: list[ClipTask]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({t.name: nn.Linear(dim, t.num_classes) for t in tasks})

    def loss(self, task: ClipTask, x: torch.Tensor, lens: torch.Tensor, targets: list, frame_rate: float) -> torch.Tensor:
        logits = self.heads[task.name](x)
        if task.kind == "ctc":
            flat = torch.tensor([p for seq in targets for p in seq])
            tlens = torch.tensor([len(seq) for seq in targets])
            logp = logits.log_softmax(-1).transpose(0, 1)
            return F.ctc_loss(logp, flat, lens, tlens, blank=0, zero_infinity=True)
        mask = frame_mask(lens, x.shape[1])
        if task.kind == "clip":
            pooled = (logits * mask[..., None]).sum(1) / lens.clamp(min=1)[:, None]
            return F.cross_entropy(pooled, torch.tensor(targets))
        # frames: multi-label activity at each token centre
        centres = (torch.arange(x.shape[1]) + 0.5) * 1000.0 / frame_rate
        target = torch.zeros_like(logits)
        for i, events in enumerate(targets):
            for label, start, end in events:
                target[i, (centres >= start) & (centres <= end), label] = 1.0
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
        return (loss * mask).sum() / mask.sum()


class ATSTTrainer(nn.Module):
    """The ATST-Frame encoder (official frontend, 25 Hz tokens) + task heads."""

    frame_rate = 25.0

    def __init__(self, config: ATSTConfig, tasks: list[ClipTask]) -> None:
        super().__init__()
        self.frontend = ATSTFrontend()
        self.encoder = ATSTFrameEncoder(config)
        for module in self.encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.heads = Heads(config.dim, tasks)

    def encode(self, wavs: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mel, mel_lens = self.frontend(wavs, lens)
        layers, token_lens = self.encoder(mel, mel_lens, "hidden_states")
        return layers[-1], token_lens


# ----------------------------------------------------------------------------- training
def train_teacher(model: nn.Module, tasks: list[ClipTask], budget: TeacherBudget, seed: int,
                  progress: Callable[[str], None]) -> list[dict]:
    """Round-robin over the tasks (each `share` times per cycle), one batch per step; AdamW,
    warmup then cosine decay."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=budget.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, budget.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / budget.steps))))
    model.train()
    history, running, start = [], {t.name: [] for t in tasks}, time.time()
    max_samples = int(budget.max_seconds * SR)
    cycle = [t for t in tasks for _ in range(t.share)]
    for step in range(budget.steps):
        task = cycle[step % len(cycle)]
        picked = rng.sample(task.items, min(budget.batch, len(task.items)))
        wavs, lens = _batch([_read(p, None if task.kind == "ctc" else max_samples, rng) for p, _ in picked])
        x, frame_lens = model.encode(wavs, lens)
        loss = model.heads.loss(task, x, frame_lens, [t for _, t in picked], model.frame_rate)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        running[task.name].append(loss.item())
        if (step + 1) % max(1, budget.steps // 10) == 0 or step + 1 == budget.steps:
            means = {k: round(float(np.mean(v[-5:])), 4) for k, v in running.items() if v}
            history.append({"step": step + 1, "seconds": round(time.time() - start, 1), **means})
            progress(f"step {step + 1}/{budget.steps} " + " ".join(f"{k} {v:.3f}" for k, v in means.items()))
    model.eval()
    return history


def save_atst(trainer: ATSTTrainer, path: Path, step: int) -> Path:
    """ATST-Frame's released layout: a Lightning .ckpt whose state_dict holds the encoder under
    model.teacher.encoder.* (the official embedding code's branch) and the hyper-parameters."""
    state = {f"{PREFIX}{k}": v.detach().clone() for k, v in trainer.encoder.state_dict().items()}
    ckpt = {
        "epoch": 0, "global_step": step, "pytorch-lightning_version": "1.9.5", "state_dict": state,
        "hparams_name": "kwargs",
        "hyper_parameters": {"arch": f"custom{trainer.encoder.config.dim}", "pos_type": "cut", "avg_blocks": 0,
                             "patch_embed": "Linear", "patch_h": 64, "patch_w": 4, "n_mels": 64, "nprompt": 0},
    }
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    return path


def train_speech_teacher(corpora: Path, out: Path, budget: TeacherBudget, seed: int = 0,
                         progress: Callable[[str], None] = log.info) -> dict:
    return _train_atst(speech_tasks(corpora), out, budget, seed, progress)


def train_audio_teacher(corpora: Path, out: Path, budget: TeacherBudget, seed: int = 0,
                        progress: Callable[[str], None] = log.info) -> dict:
    return _train_atst(audio_tasks(corpora), out, budget, seed, progress)


def train_sound_teacher(corpora: Path, out: Path, budget: TeacherBudget, seed: int = 0,
                        progress: Callable[[str], None] = log.info) -> dict:
    return _train_atst(audio_tasks(corpora, SOUND_TASKS), out, budget, seed, progress)


def train_music_teacher(corpora: Path, out: Path, budget: TeacherBudget, seed: int = 0,
                        progress: Callable[[str], None] = log.info) -> dict:
    return _train_atst(audio_tasks(corpora, MUSIC_TASKS), out, budget, seed, progress)


TRAINERS = {"speech": train_speech_teacher, "audio": train_audio_teacher, "sound": train_sound_teacher,
            "music": train_music_teacher}


def _train_atst(tasks: list[ClipTask], out: Path, budget: TeacherBudget, seed: int,
                progress: Callable[[str], None]) -> dict:
    torch.manual_seed(seed)  # the initial weights too: the same seed gives the same teacher
    trainer = ATSTTrainer(SMALL_ATST, tasks)
    history = train_teacher(trainer, tasks, budget, seed, progress)
    save_atst(trainer, out, budget.steps)
    return {"checkpoint": str(out), "format": "ATST-Frame Lightning .ckpt", "tasks": {t.name: len(t.items) for t in tasks},
            "history": history}
