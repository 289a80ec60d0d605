"""`usad corpora check`: load every corpus with the real consumers — s3prl's own dataset classes
for the SUPERB formats and heareval's own task loading/embedding code for HEAR — and fail with a
ValueError naming the corpus and the problem."""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pandas as pd

from . import pool
from .speech_commands import which_set


def _librispeech(root: Path) -> str:
    from s3prl.dataio.corpus.librispeech import LibriSpeech
    from s3prl.dataio.encoder.g2p import G2P
    from s3prl.downstream.asr.dataset import SequenceDataset
    from s3prl.downstream.asr.dictionary import Dictionary
    from s3prl.downstream.ctc.text import load_text_encoder

    corpus = LibriSpeech(str(root), n_jobs=1)
    train, valid, test = corpus.data_split_ids
    if not (train and valid and test):
        raise ValueError(f"{root}: a LibriSpeech split is empty ({len(train)}/{len(valid)}/{len(test)})")
    g2p = G2P(file_list=[str(root / "lexicon.txt")])  # asserts every word is in the lexicon
    phones = load_text_encoder("word", str(root / "phoneme.txt"))
    for uid, item in corpus.all_data.items():
        if not item["transcription"]:
            raise ValueError(f"{root}: no transcript for {uid}")
        ids = phones.encode(g2p.encode(item["transcription"]))
        if phones.unk_idx in ids:
            raise ValueError(f"{root}: {uid} has phones outside phoneme.txt")
    dictionary = Dictionary.load(str(root / "char.dict"))
    for split in ("train-clean-100", "dev-clean", "test-clean"):
        ds = SequenceDataset("train", 1, dictionary, str(root), str(root / "len_for_bucket"), train=[split])
        wavs, labels, _ = ds[0]
        if dictionary.unk() in labels[0].tolist() or len(wavs[0]) == 0:
            raise ValueError(f"{root}: s3prl's ASR dataset read an empty clip or unknown characters in {split}")
    return f"{len(train)}/{len(valid)}/{len(test)} utterances; G2P, phoneme and char dictionaries cover all"


def _speech_commands(root: Path) -> str:
    from s3prl.downstream.speech_commands.dataset import CLASSES, SpeechCommandsDataset, SpeechCommandsTestingDataset

    train_root, test_root = root / "speech_commands_v0.01", root / "speech_commands_test_set_v0.01"
    listed = set((train_root / "validation_list.txt").read_text().split())
    lists: dict[str, list] = {"training": [], "validation": []}
    for wav in sorted(train_root.glob("*/*.wav")):
        if wav.parent.name == "_background_noise_":
            continue
        which = which_set(wav.name)
        if (which == "validation") != (f"{wav.parent.name}/{wav.name}" in listed):
            raise ValueError(f"{train_root}: validation_list.txt disagrees with the hash rule for {wav.name}")
        if which in lists:
            lists[which].append((wav.parent.name, wav))
    kw = dict(speech_commands_root=str(train_root), speech_commands_test_root=str(test_root))
    counts = {}
    for name, ds in (("train", SpeechCommandsDataset(lists["training"], **kw)),
                     ("dev", SpeechCommandsDataset(lists["validation"], **kw)),
                     ("test", SpeechCommandsTestingDataset(**kw))):
        seen = {label for label, _ in ds.data}
        if name != "dev" and seen != set(CLASSES):
            raise ValueError(f"{root}: s3prl's {name} set lacks classes {sorted(set(CLASSES) - seen)}")
        for i in range(len(ds)):
            wav, _, _ = ds[i]
            if len(wav) < 16000 * 0.99:
                raise ValueError(f"{root}: {ds.data[i][1]} is shorter than 1 s after s3prl's effects")
        counts[name] = len(ds)
    return ", ".join(f"{k} {v}" for k, v in counts.items()) + " items loaded through s3prl's effects"


def _voxceleb(root: Path) -> str:
    from s3prl.downstream.voxceleb1 import dataset as vox

    with tempfile.TemporaryDirectory() as cache:
        vox.CACHE_PATH = cache + "/"  # s3prl caches file lists inside its package; never reuse a stale one
        counts = {}
        for mode in ("train", "dev", "test"):
            ds = vox.SpeakerClassifiDataset(mode, root, str(root / "iden_split.txt"))
            if not len(ds) or not all(0 <= y < ds.speaker_num for y in ds.label):
                raise ValueError(f"{root}: s3prl's SID {mode} set is empty or has labels outside 0..{ds.speaker_num - 1}")
            wav, _, _ = ds[0]
            counts[mode] = (len(ds), len(set(ds.label)))
    return ", ".join(f"{m} {n} utts/{s} speakers" for m, (n, s) in counts.items())


def _fluent(root: Path) -> str:
    from s3prl.downstream.fluent_commands.dataset import FluentCommandsDataset
    from s3prl.downstream.fluent_commands.expert import DownstreamExpert

    state = SimpleNamespace(datarc={"file_path": str(root)})
    DownstreamExpert.get_dataset(state)  # s3prl's own csv reading and slot-value maps
    for name in ("train_df", "valid_df", "test_df"):
        ds = FluentCommandsDataset(getattr(state, name), state.base_path, state.Sy_intent)
        for i in range(len(ds)):
            try:
                ds[i]
            except KeyError as exc:
                raise ValueError(f"{root}: {name} row {i} has slot value {exc} unseen in train_data.csv") from None
    return f"{len(state.train_df)}/{len(state.valid_df)}/{len(state.test_df)} utterances, slots {state.values_per_slot}"


def _hear(root: Path) -> str:
    from heareval.embeddings.task_embeddings import Embedding, task_embeddings
    from heareval.predictions.task_predictions import get_splits_from_metadata
    from heareval.score import available_scores

    tasks = sorted(p for p in (root / "tasks").iterdir())
    embedding = Embedding("downstream_recipes.corpora.probe_module")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            meta = json.loads((task / "task_metadata.json").read_text())
            unknown = [s for s in meta["evaluation"] if s not in available_scores]
            if unknown:
                raise ValueError(f"{task}: scores {unknown} are not heareval scores")
            vocab = set(pd.read_csv(task / "labelvocabulary.csv")["label"].astype(str))
            for split in meta["splits"]:
                for name, labels in json.loads((task / f"{split}.json").read_text()).items():
                    found = {lab["label"] if isinstance(lab, dict) else lab for lab in labels}
                    if not found <= vocab:
                        raise ValueError(f"{task}/{split}.json: {name} has labels {found - vocab} not in labelvocabulary.csv")
            get_splits_from_metadata(meta)
            task_embeddings(embedding, task, Path(tmp) / task.name)
            out.append(f"{task.name} ({meta['split_mode']})")
    return "heareval embedded " + ", ".join(out)


def _iemocap(root: Path) -> str:
    from s3prl.downstream.emotion.dataset import IEMOCAPDataset

    from downstream_recipes.superb.recipes import iemocap_meta_data

    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        meta = iemocap_meta_data(root, Path(tmp))  # s3prl's own IEMOCAP_preprocess.py
        for session in sorted(p.name for p in meta.iterdir()):
            test = IEMOCAPDataset(str(root), str(meta / session / "test_meta_data.json"), pre_load=False)
            train = IEMOCAPDataset(str(root), str(meta / session / "train_meta_data.json"), pre_load=False)
            labels = {test.idx2emotion[test[i][1]] for i in range(len(test))}
            if labels != set(test.class_dict):
                raise ValueError(f"{root}: {session} lacks emotions {sorted(set(test.class_dict) - labels)}")
            if not len(train) or len(train[0][0]) == 0:
                raise ValueError(f"{root}: the training sessions of fold {session} are empty")
            counts.append(len(test))
    return f"{len(counts)} sessions of {'/'.join(map(str, counts))} utterances, 4 emotions each, through IEMOCAP_preprocess"


def _librimix_sd(root: Path) -> str:
    import numpy as np
    from s3prl.downstream.diarization.dataset import DiarizationDataset

    overlap, counts = 0, []
    for split in ("train", "dev", "test"):
        ds = DiarizationDataset(split, str(root / split), chunk_size=2000, frame_shift=320, subsampling=1, rate=16000,
                                num_speakers=2)
        missing = [p for p in ds.data.wavs.values() if not Path(p).is_file()]
        if missing:
            raise ValueError(f"{root / split}/wav.scp names missing files, e.g. {missing[0]} (was the corpus moved?)")
        labels = []
        for i in range(len(ds)):
            item = ds[i]
            labels += item[1] if split == "test" else [item[1]]
        frames = np.concatenate(labels)
        if frames.shape[1] != 2 or not frames[:, 0].any() or not frames[:, 1].any():
            raise ValueError(f"{root / split}: s3prl's labels do not show two active speakers")
        overlap += int((frames.sum(1) == 2).sum())
        counts.append(len(ds))
    if not overlap:
        raise ValueError(f"{root}: no frame has both speakers active (no overlap)")
    return f"train/dev/test {'/'.join(map(str, counts))} items; {overlap} overlapped frames at 320-sample labels"


def _voxceleb_sv(root: Path) -> str:
    from s3prl.downstream.sv_voxceleb1 import dataset as sv

    from downstream_recipes.superb.s3prl_entry import redirect_caches

    dev_ids = {p.name for p in (root / "dev" / "wav").iterdir()}
    test_ids = {p.name for p in (root / "test" / "wav").iterdir()}
    if dev_ids & test_ids:
        raise ValueError(f"{root}: speakers {sorted(dev_ids & test_ids)} are in both dev and test")
    original = sv.__file__
    with tempfile.TemporaryDirectory() as cache:
        redirect_caches(cache)  # s3prl caches trimmed lengths inside its package otherwise
        try:
            train = sv.SpeakerVerifi_train({"min_sec": 32000}, ["Voxceleb1"], [root / "dev" / "wav"], None, 128000, n_jobs=1)
        finally:
            sv.__file__ = original
    n_files = len(list((root / "dev" / "wav").rglob("*.wav")))
    if len(train) != n_files or train.speaker_num != len(dev_ids):
        raise ValueError(f"{root}: s3prl keeps {len(train)} of {n_files} training utterances (under 2 s after its VAD)")
    train[0]
    test = sv.SpeakerVerifi_test({"min_sec": 32000}, root / "test" / "wav", root / "voxceleb1_test_v2.txt")
    missing = [p for p in test.dataset if not Path(p).is_file()]
    labels = {label for label, _, _ in test.pair_table}
    if missing or labels != {"0", "1"}:
        raise ValueError(f"{root}: trials name missing files {missing[:1]} or lack target/non-target ({sorted(labels)})")
    test[0]
    return (f"{len(dev_ids)} training speakers ({len(train)} utterances), {len(test_ids)} disjoint test speakers, "
            f"{len(test.pair_table)} trials")


def _snips(root: Path) -> str:
    import yaml
    from s3prl.downstream.ctc.text import load_text_encoder

    from downstream_recipes.superb.recipes import CONFIG_DIR
    from downstream_recipes.superb.snips import SnipsDataset

    corpus = yaml.safe_load((CONFIG_DIR / "sf.yaml").read_text())["downstream_expert"]["corpus"]
    tokenizer = load_text_encoder("character-slot", str(root / "character.txt"), str(root / "slots.txt"))
    counts = []
    for split in ("train", "dev", "test"):
        ds = SnipsDataset(corpus[split], tokenizer, 1, str(root), **{k: v for k, v in corpus.items() if k.endswith("speakers")})
        tokens = [t for _, ids in ds.items for t in ids]
        if tokenizer.unk_idx in tokens or not any(t >= len(tokenizer._vocab_list) for t in tokens):
            raise ValueError(f"{root}: {split} has characters outside character.txt or no slot")
        counts.append(len(ds))
    return f"train/valid/test {'/'.join(map(str, counts))} utterances under SUPERB's speaker lists; slots encode"


def _quesst(root: Path) -> str:
    from s3prl.downstream.quesst14_dtw.dataset import QUESST14Dataset

    from downstream_recipes.superb.quesst_score import read_groundtruth

    out = []
    for split in ("dev", "eval"):
        ds = QUESST14Dataset(split, dataset_root=str(root))
        truth = read_groundtruth(root / "scoring" / f"groundtruth_quesst14_{split}")
        names = [p.with_suffix("").name for p in ds.data]
        if names[: ds.n_queries] != list(truth.queries) or sorted(names[ds.n_queries :]) != sorted(truth.documents):
            raise ValueError(f"{root}: the {split} lists and the ground truth name different queries or documents")
        unseen = set(truth.queries) - {q for q, _ in truth.targets}
        if unseen:
            raise ValueError(f"{root}: {split} queries {sorted(unseen)} occur in no document")
        for i in (0, len(ds) - 1):
            if len(ds[i][0]) == 0:
                raise ValueError(f"{root}: {ds.data[i]} is empty after s3prl's effects")
        out.append(f"{split} {ds.n_queries} queries x {ds.n_docs} documents, {len(truth.targets)} targets")
    return "; ".join(out)


def _pool(out: Path) -> str:
    root = out / "pool"
    rows = pool.read(root / "manifest.tsv")
    eval_hashes = set()
    for corpus in [folder for name, (folder, _) in CHECKS.items() if (out / f".{name}.done").is_file()]:
        for path in (out / corpus).rglob("*"):
            if path.suffix in (".wav", ".flac"):
                eval_hashes.add(hashlib.sha1(path.read_bytes()).hexdigest())
    for path, *_ in rows:
        if Path(path).resolve().is_relative_to(out.resolve()) and not Path(path).resolve().is_relative_to(root.resolve()):
            raise ValueError(f"pool manifest lists an evaluation file: {path}")
        if hashlib.sha1(Path(path).read_bytes()).hexdigest() in eval_hashes:
            raise ValueError(f"pool file {path} duplicates an evaluation file")
    domains = {d for *_, d in rows}
    if domains != {"speech", "sound", "music"}:
        raise ValueError(f"{root}: pool lacks domains {sorted({'speech', 'sound', 'music'} - domains)}")
    return f"{len(rows)} files, no file shared with any evaluation split"


CHECKS: dict[str, tuple[str, Callable[[Path], str]]] = {
    "librispeech": ("LibriSpeech", _librispeech),
    "speech_commands": ("speech_commands", _speech_commands),
    "voxceleb1": ("VoxCeleb1", _voxceleb),
    "fluent_speech_commands": ("fluent_speech_commands", _fluent),
    "hear": ("hear", _hear),
    "iemocap": ("IEMOCAP_full_release", _iemocap),
    "librimix_sd": ("librimix_sd", _librimix_sd),
    "voxceleb1_sv": ("VoxCeleb1_sv", _voxceleb_sv),
    "snips": ("SNIPS", _snips),
    "quesst14": ("quesst14Database", _quesst),
}


def check_corpora(out: "str | Path", stages: "list[str] | None" = None) -> dict[str, str]:
    """Check the named stages under `out` (default: every stage that is built; `build` can make
    any subset); returns one summary line per corpus."""
    from usad_upstream.compat import patch_heareval, patch_s3prl

    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"corpora folder not found: {out}")
    known = [*CHECKS, "pool"]
    unknown = [s for s in stages or [] if s not in known]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected some of {known}")
    chosen = stages or [s for s in known if (out / f".{s}.done").is_file()]
    if not chosen:
        raise ValueError(f"{out}: not built: no corpus there (no .<stage>.done); run `usad corpora build --out {out}`")
    patch_s3prl()
    patch_heareval()
    results = {}
    for name in chosen:
        folder = CHECKS[name][0] if name in CHECKS else "pool"
        if not (out / f".{name}.done").is_file():
            raise ValueError(f"{out / folder}: not built (no .{name}.done); run `usad corpora build --out {out} --stage {name}`")
        try:
            results[name] = CHECKS[name][1](out / folder) if name in CHECKS else _pool(out)
        except (AssertionError, KeyError, IndexError, FileNotFoundError, RuntimeError) as exc:
            raise ValueError(f"{out / folder}: rejected by its real loader: {type(exc).__name__}: {exc}") from None
    return results
