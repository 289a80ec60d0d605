"""What each SUPERB task needs from s3prl: expert, config, data paths, quick step count.

`--data ROOT` is one directory per task, laid out as the official dataset (the local corpora
builders write the same layouts). Paths are passed to s3prl through its `-o` override; the
config files under configs/ are never edited.

| task | expert          | ROOT holds                                                                      |
|------|-----------------|---------------------------------------------------------------------------------|
| PR   | ctc (libriphone)| LibriSpeech: train-clean-100/, dev-clean/, test-clean/, lexicon.txt, phoneme.txt |
| KS   | speech_commands | speech_commands_v0.01/, speech_commands_test_set_v0.01/                          |
| IC   | fluent_commands | data/{train,valid,test}_data.csv and the wavs they name                          |
| SID  | voxceleb1       | */wav/idXXXXX/..., iden_split.txt                                                |
| ER   | emotion         | IEMOCAP_full_release: Session1..5/ (meta_data/ is made with s3prl's own          |
|      |                 | IEMOCAP_preprocess.py into the run directory when ROOT has none)                 |
| ASR  | asr             | LibriSpeech + char.dict, len_for_bucket/                                         |
| SD   | diarization     | train/, dev/, test/ Kaldi-style data dirs (wav.scp, segments, utt2spk, ...)      |
| SF   | ctc (snips)     | Audio SNIPS: train/valid/test/*.wav, all.iob.snips.txt, slots.txt, character.txt  |
| ASV  | sv_voxceleb1    | dev/wav, test/wav, voxceleb1_test_v2.txt                                         |
| QbE  | quesst14_dtw    | quesst14Database: Audio/, {dev,eval}_queries/, scoring/ (lists and ground truth)  |

Short runs (`--steps N`, or `--quick` = Recipe.quick_steps: PR 30, KS 40, IC 40, SID 12, ER/ASR/SD/SF/
ASV 30) change only the runner's step counts (total, eval, save, log) through `-o`; every
SUPERB hyperparameter stays as in the config. QbE trains nothing (DTW on frozen features of one
layer at a time; qbe.py), so it has no steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

CONFIG_DIR = Path(__file__).parent / "configs"
DE = "config.downstream_expert"


def _first(what: str, *candidates: Path) -> Path:
    for path in candidates:
        if path.exists():
            return path
    raise ValueError(f"{what} not found; looked for {', '.join(str(p) for p in candidates)}")


def _ks(root: Path, expdir: Path) -> dict[str, object]:
    return {
        f"{DE}.datarc.speech_commands_root": _first("KS training data", root / "speech_commands_v0.01", root / "train"),
        f"{DE}.datarc.speech_commands_test_root": _first("KS test data", root / "speech_commands_test_set_v0.01",
                                                         root / "test"),
    }


def _ic(root: Path, expdir: Path) -> dict[str, object]:
    csv = _first("IC data/train_data.csv", root / "data" / "train_data.csv",
                 root / "fluent_speech_commands_dataset" / "data" / "train_data.csv")
    return {f"{DE}.datarc.file_path": csv.parent.parent}


def _sid(root: Path, expdir: Path) -> dict[str, object]:
    return {
        f"{DE}.datarc.file_path": root,
        f"{DE}.datarc.meta_data": _first("SID split list", root / "iden_split.txt", root / "veri_test_class.txt"),
    }


def iemocap_meta_data(root: Path, out_dir: Path) -> Path:
    """meta_data/Session{n}/{train,test}_meta_data.json by s3prl's own IEMOCAP_preprocess.py (the
    step its ER recipe asks for), written to out_dir so that the dataset folder stays read-only."""
    sessions = sorted(p.name for p in root.glob("Session*") if (p / "dialog" / "EmoEvaluation").is_dir())
    if not sessions:
        raise ValueError(f"{root}: no Session*/dialog/EmoEvaluation label folders (IEMOCAP_full_release layout)")
    from usad_upstream.compat import patch_s3prl

    patch_s3prl()
    from s3prl.downstream.emotion.IEMOCAP_preprocess import preprocess

    for i, session in enumerate(sessions):
        target = out_dir / session
        target.mkdir(parents=True, exist_ok=True)
        if not (target / "test_meta_data.json").is_file():
            preprocess(str(root), sessions[:i] + sessions[i + 1:], str(target / "train_meta_data.json"))
            preprocess(str(root), [session], str(target / "test_meta_data.json"))
    return out_dir


def _er(root: Path, expdir: Path) -> dict[str, object]:
    meta = root / "meta_data" if (root / "meta_data").is_dir() else iemocap_meta_data(root, expdir / "er_meta_data")
    return {f"{DE}.datarc.root": root, f"{DE}.datarc.meta_data": meta}


LIBRISPEECH_SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}


def librispeech_csvs(root: Path, out_dir: Path) -> Path:
    """SUPERB PR split files (wav_path, transcription) from LibriSpeech transcripts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, folder in LIBRISPEECH_SPLITS.items():
        base = _first(f"PR {split} split", root / folder)
        rows = []
        for trans in sorted(base.rglob("*.trans.txt")):
            for line in trans.read_text().splitlines():
                if not line.strip():
                    continue
                utt, _, text = line.partition(" ")
                audio = [p for p in (trans.parent / f"{utt}.flac", trans.parent / f"{utt}.wav") if p.is_file()]
                if not audio:
                    raise ValueError(f"{trans}: no audio file for utterance {utt}")
                rows.append({"wav_path": str(audio[0].resolve()), "transcription": text.strip()})
        if not rows:
            raise ValueError(f"{base}: no *.trans.txt transcripts")
        pd.DataFrame(rows).to_csv(out_dir / f"{split}.csv", index=False)
    return out_dir


def _pr(root: Path, expdir: Path) -> dict[str, object]:
    lexicons = sorted((root / "lexicon").glob("*.txt")) if (root / "lexicon").is_dir() else []
    lexicons = lexicons or [_first("PR lexicon", root / "lexicon.txt")]
    return {
        f"{DE}.corpus.csv_dir": librispeech_csvs(root, expdir / "pr_data"),
        f"{DE}.corpus.lexicon": [str(p) for p in lexicons],
        f"{DE}.text.vocab_file": _first("PR phone vocabulary", root / "phoneme.txt"),
    }


def _asr(root: Path, expdir: Path) -> dict[str, object]:
    return {
        f"{DE}.datarc.libri_root": root,
        f"{DE}.datarc.bucket_file": _first("ASR length buckets", root / "len_for_bucket"),
        f"{DE}.datarc.dict_path": _first("ASR character dictionary", root / "char.dict"),
    }


def _sd(root: Path, expdir: Path) -> dict[str, object]:
    return {f"{DE}.loaderrc.{s}_dir": _first(f"SD {s} data dir", root / s) for s in ("train", "dev", "test")}


def _sf(root: Path, expdir: Path) -> dict[str, object]:
    return {
        f"{DE}.corpus.path": root,
        f"{DE}.text.slots_file": _first("SF slot list", root / "slots.txt"),
        f"{DE}.text.vocab_file": _first("SF character vocabulary", root / "character.txt"),
    }


def _asv(root: Path, expdir: Path) -> dict[str, object]:
    _first("ASV training speakers", root / "dev" / "wav")
    _first("ASV test speakers", root / "test" / "wav")
    trials = _first("ASV test trials", root / "voxceleb1_test_v2.txt", root / "veri_test2.txt")
    # s3prl trains on every speaker folder of dev/wav and never reads train_meta_data; it reads
    # dev_meta_data as trials but never evaluates dev (eval_dataloaders is empty: its dev scoring
    # would use the test trials), so files s3prl's repository ships for those keys are optional.
    return {
        f"{DE}.datarc.file_path": root,
        f"{DE}.datarc.train_meta_data": _first("ASV training list", root / "dev_speaker_ids.txt", trials),
        f"{DE}.datarc.dev_meta_data": _first("ASV dev trials", root / "dev_meta_data.txt", trials),
        f"{DE}.datarc.test_meta_data": trials,
    }


def _qbe(root: Path, expdir: Path) -> dict[str, object]:
    for name in ("language_key_utterances.lst", "language_key_dev.lst", "language_key_eval.lst",
                 "groundtruth_quesst14_dev", "groundtruth_quesst14_eval"):
        _first(f"QbE {name}", root / "scoring" / name)
    return {f"{DE}.datarc.dataset_root": root}


@dataclass(frozen=True)
class Recipe:
    task: str
    expert: str
    config: Path
    data: Callable[[Path, Path], dict[str, object]]
    workers_key: str
    quick_steps: int
    test_split: str = "test"
    # Checkpoint names s3prl's expert gives its best-dev model; empty: no dev selection (ASV).
    best_names: tuple[str, ...] = ("dev-best.ckpt",)
    trains: bool = True  # QbE: no downstream training (qbe.py runs its stages)


RECIPES: dict[str, Recipe] = {
    r.task: r
    for r in (
        Recipe("PR", "ctc", CONFIG_DIR / "pr.yaml", _pr, f"{DE}.corpus.num_workers", 30),
        Recipe("KS", "speech_commands", CONFIG_DIR / "ks.yaml", _ks, f"{DE}.datarc.num_workers", 40),
        Recipe("IC", "fluent_commands", CONFIG_DIR / "ic.yaml", _ic, f"{DE}.datarc.num_workers", 40),
        Recipe("SID", "voxceleb1", CONFIG_DIR / "sid.yaml", _sid, f"{DE}.datarc.num_workers", 12),
        Recipe("ER", "emotion", CONFIG_DIR / "er.yaml", _er, f"{DE}.datarc.num_workers", 30),
        Recipe("ASR", "asr", CONFIG_DIR / "asr.yaml", _asr, f"{DE}.datarc.num_workers", 30, "test-clean",
               ("dev-clean-best.ckpt",)),
        Recipe("SD", "diarization", CONFIG_DIR / "sd.yaml", _sd, f"{DE}.loaderrc.num_workers", 30, "test",
               ("best-states-dev.ckpt",)),
        Recipe("SF", "ctc", CONFIG_DIR / "sf.yaml", _sf, f"{DE}.corpus.num_workers", 30),
        Recipe("ASV", "sv_voxceleb1", CONFIG_DIR / "asv.yaml", _asv, f"{DE}.datarc.num_workers", 30, "test", ()),
        Recipe("QbE", "quesst14_dtw", CONFIG_DIR / "qbe.yaml", _qbe, f"{DE}.datarc.num_workers", 0, "eval", (),
               trains=False),
    )
}


def get_recipe(task: str) -> Recipe:
    key = task.upper() if task.upper() != "QBE" else "QbE"
    if key not in RECIPES:
        raise ValueError(f"unknown SUPERB task {task!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[key]


def step_overrides(recipe: Recipe, steps: int) -> dict[str, object]:
    """Short runs for smoke tests and CPU: fewer steps, at least two dev evaluations. A task
    without training (QbE) has no steps to shorten."""
    if not recipe.trains:
        return {}
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    every = max(1, steps // 4) if recipe.best_names else max(1, steps // 2)
    return {
        "config.runner.total_steps": steps,
        "config.runner.eval_step": every,
        "config.runner.save_step": every,
        "config.runner.log_step": max(1, min(every, steps // 10)),
    }


def unknown_config_keys(config: Path, override: str) -> list[str]:
    """The `config.*` keys of an s3prl `-o` text that the task's config does not have: s3prl adds
    such keys silently, so a typo (config.optimizr.lr) would change nothing without a word."""
    tree = yaml.safe_load(config.read_text()) or {}
    unknown = []
    for item in override.split(",,"):
        key = item.partition("=")[0].strip()
        if not key.startswith("config."):
            continue
        node: object = tree
        for part in key.split(".")[1:]:
            if not isinstance(node, dict) or part not in node:
                unknown.append(key)
                break
            node = node[part]
    return unknown


def format_overrides(values: dict[str, object]) -> str:
    """s3prl's `-o` syntax: `key=value,,key=value`; values are Python literals (s3prl eval()s)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, Path):
            value = str(value.resolve())
        if isinstance(value, (list, tuple)):
            value = [str(v) for v in value]
        text = repr(value)
        if ",," in text or "=" in text:
            raise ValueError(f"override {key}: {text} contains ',,' or '=', which s3prl's -o cannot carry")
        parts.append(f"{key}={text}")
    return ",,".join(parts)
