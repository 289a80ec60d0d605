"""The SUPERB corpora beyond PR/KS/IC/SID (size `test`): each loads through s3prl's own dataset
classes (`usad corpora check`), plus the properties the tasks rely on: acted emotions that
differ in prosody, real speakers where the task claims them, disjoint splits, overlap in SD,
ground truth that matches the documents, determinism."""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("s3prl")

from downstream_recipes.corpora import build, check, sources  # noqa: E402

NEW = ["iemocap", "librimix_sd", "voxceleb1_sv", "snips", "quesst14"]


def _apt_possible() -> bool:
    import os
    import shutil

    if shutil.which("dpkg-query") is None:
        return False
    return not sources.missing_packages(sources.packages_for("test")) or os.geteuid() == 0


pytestmark = pytest.mark.skipif(not _apt_possible(), reason="needs Debian packages (or root to install them)")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("superb_corpora")
    build.build_corpora(out, size="test", seed=0, stages=NEW)  # librimix_sd pulls in librispeech
    return out


def test_each_corpus_loads_through_s3prls_own_classes(corpora: Path) -> None:
    results = check.check_corpora(corpora)  # every built stage
    assert set(results) == {"librispeech", *NEW}
    assert "4 emotions each, through IEMOCAP_preprocess" in results["iemocap"]
    assert "overlapped frames" in results["librimix_sd"] and "disjoint test speakers" in results["voxceleb1_sv"]
    assert "slots encode" in results["snips"] and "targets" in results["quesst14"]


def _rms(path: Path) -> float:
    wav, _ = sf.read(str(path))
    return float(np.sqrt(np.mean(wav**2)))


def test_iemocap_labels_follow_iemocap_and_the_acted_prosody_differs(corpora: Path) -> None:
    root = corpora / "IEMOCAP_full_release"
    labels: dict[str, str] = {}
    for path in root.glob("Session*/dialog/EmoEvaluation/*.txt"):
        for line in path.read_text().splitlines():
            if line.startswith("["):
                span, utt, label, vad = line.split("\t")
                assert re.fullmatch(r"\[\d+\.\d{4} - \d+\.\d{4}\]", span) and vad.startswith("[")
                labels[utt] = label
    wavs = {p.stem: p for p in root.glob("Session*/sentences/wav/*/*.wav")}
    assert set(labels) == set(wavs) and {"neu", "ang", "sad"} <= set(labels.values())
    level = defaultdict(list)
    for utt, label in labels.items():
        level[label].append(_rms(wavs[utt]))
    # acted by parameters: anger +6 dB, sadness -6 dB around neutral (the datasheet's table)
    assert np.mean(level["ang"]) > 1.5 * np.mean(level["neu"]) > 2.0 * np.mean(level["sad"])
    assert "real recording" in (root / "README.md").read_text() and "Nobody here expresses" in (root / "README.md").read_text()


def test_sd_segments_fit_their_recordings_and_test_holds_the_real_reader(corpora: Path) -> None:
    root = corpora / "librimix_sd"
    speakers = (corpora / "LibriSpeech" / "SPEAKERS.TXT").read_text()
    real = re.search(r"^(\d+)\s*\|.*real recording", speakers, re.M).group(1)  # type: ignore[union-attr]
    for split in ("train", "dev", "test"):
        dur = dict(line.split() for line in (root / split / "reco2dur").read_text().splitlines())
        utt2spk = dict(line.split() for line in (root / split / "utt2spk").read_text().splitlines())
        per_rec = defaultdict(set)
        for line in (root / split / "segments").read_text().splitlines():
            utt, rec, start, end = line.split()
            assert 0 <= float(start) < float(end) <= float(dur[rec]) + 1e-6
            per_rec[rec].add(utt2spk[utt])
        assert all(len(s) == 2 for s in per_rec.values())
        rttm = (root / split / "rttm").read_text().splitlines()
        assert len(rttm) == len(utt2spk) and all(line.startswith("SPEAKER ") for line in rttm)
    assert real in (root / "test" / "spk2utt").read_text().split()
    assert real not in (root / "train" / "spk2utt").read_text().split()


def test_asv_test_speakers_are_unseen_and_mostly_real(corpora: Path) -> None:
    root = corpora / "VoxCeleb1_sv"
    meta = [line.split("\t") for line in (root / "vox1_meta.csv").read_text().splitlines()[1:]]
    test = [m for m in meta if m[4] == "test"]
    assert {m[0] for m in test} == {p.name for p in (root / "test" / "wav").iterdir()}
    assert not {m[0] for m in test} & {p.name for p in (root / "dev" / "wav").iterdir()}
    assert sum(m[2] == "-" for m in test) >= len(test) / 2  # "-": a real recording (sex not recorded)
    trials = [line.split() for line in (root / "voxceleb1_test_v2.txt").read_text().splitlines()]
    for label, a, b in trials:
        assert (label == "1") == (a.split("/")[0] == b.split("/")[0])
    assert {t[0] for t in trials} == {"0", "1"}


def test_snips_speakers_are_superbs_and_no_sentence_crosses_splits(corpora: Path) -> None:
    import yaml

    from downstream_recipes.superb.recipes import CONFIG_DIR

    corpus = yaml.safe_load((CONFIG_DIR / "sf.yaml").read_text())["downstream_expert"]["corpus"]
    root = corpora / "SNIPS"
    texts: dict[str, set[str]] = defaultdict(set)
    for line in (root / "all.iob.snips.txt").read_text().splitlines():
        utt, rest = line.split(" ", 1)
        words, tags = rest.split("\t")
        speaker, _, split, _ = utt.split("-")
        assert speaker in corpus[f"{split}_speakers"]
        assert len(words.split()) == len(tags.split())  # BOS w1..wn EOS vs O t1..tn intent
        texts[split].add(words)
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["valid"]
    assert (root / "slots.txt").read_text().splitlines()[0] == "O"


def test_quesst_documents_say_their_query_words(corpora: Path) -> None:
    from downstream_recipes.superb.quesst_score import read_groundtruth

    root = corpora / "quesst14Database"
    words = {}
    for split in ("dev", "eval"):
        gt = root / "scoring" / f"groundtruth_quesst14_{split}"
        tlist = (gt / f"quesst14_{split}.tlist.xml").read_text()
        words.update(dict(re.findall(r'termid="([^"]+)"><termtext>([^<]+)<', tlist)))
        truth = read_groundtruth(gt)
        assert {q for q, _ in truth.targets} == set(truth.queries)
    dev_words = {w for q, w in words.items() if "_dev_" in q}
    assert dev_words and not dev_words & {w for q, w in words.items() if "_eval_" in q}
    readme = (root / "README.md").read_text()
    assert "real recordings" in readme and "C_miss 100, C_fa 1, P_target 0.0008" in readme


def test_same_seed_same_corpus_and_librimix_needs_librispeech(corpora: Path, tmp_path: Path) -> None:
    build.build_corpora(tmp_path, size="test", seed=0, stages=["snips", "librimix_sd"])
    assert (tmp_path / ".librispeech.done").is_file()  # pulled in for the mixtures
    for name in ("SNIPS/all.iob.snips.txt", "librimix_sd/test/segments"):
        assert (corpora / name).read_text() == (tmp_path / name).read_text()
    for wav in sorted((corpora / "SNIPS" / "test").glob("*.wav"))[:2]:
        other = tmp_path / "SNIPS" / "test" / wav.name
        assert hashlib.sha1(wav.read_bytes()).digest() == hashlib.sha1(other.read_bytes()).digest()
    assert json.loads((tmp_path / ".snips.done").read_text())["size"] == "test"
    with pytest.raises(ValueError, match="not built"):
        check.check_corpora(tmp_path, ["quesst14"])


# ---------------------------------------------------------------- end to end through s3prl's runner
# Every task once, as `usad superb run` does it (train -> select -> test in s3prl processes), on
# the test-size corpora, with 1-2 training steps and small downstream heads (-o) so that the
# five trained tasks and QbE's layer search cost about 3 CPU-minutes together. These are the
# paths no real dataset had ever exercised here: each expert's loader, its metric lines and
# the leaderboard's reading of them.
SMALL_RNN = ("config.downstream_expert.{m}.project_dim=32,,config.downstream_expert.{m}.RNNs.dim=[32,32]")
RUNS = {  # task: (corpus folder, steps, s3prl overrides)
    "ER": ("IEMOCAP_full_release", 2, None),
    "ASR": ("LibriSpeech", 2, SMALL_RNN.format(m="modelrc") + ",,config.downstream_expert.datarc.train_batch_size=8"),
    "SD": ("librimix_sd", 2, "config.downstream_expert.modelrc.hidden_size=32"),
    "SF": ("SNIPS", 2, SMALL_RNN.format(m="model") + ",,config.downstream_expert.corpus.batch_size=8"),
    "ASV": ("VoxCeleb1_sv", 1, "config.downstream_expert.modelrc.input_dim=32,,"
            "config.downstream_expert.modelrc.module_config.XVector.agg_dim=64"),
}
METRICS = {"ER": ["acc"], "ASR": ["wer"], "SD": ["der"], "SF": ["slot_type_f1", "slot_value_cer"], "ASV": ["eer"],
           "QbE": ["mtwv"]}


@pytest.mark.timeout(1800)  # 2.3 CPU-minutes measured; 12 min wall on the shared 2-core machine (load ~18)
def test_every_new_task_end_to_end_into_the_leaderboard(corpora: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    import importlib.util

    import torch

    from downstream_recipes.superb.runner import SuperbRun, run_superb
    from results.collect import collect
    from results.published import load_published
    from results.render import render
    from usad_upstream import build_model, save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny1.safetensors"
    save_checkpoint(build_model("tiny", layers=1), ckpt)  # 2 feature layers: QbE searches both
    runs = tmp_path / "runs"
    for task, (folder, steps, override) in RUNS.items():
        run_superb(SuperbRun(task=task, upstream="usad", upstream_ckpt=ckpt, data=corpora / folder, runs_dir=runs,
                             steps=steps, workers=0, override=override))
    # QbE exactly as a user types it (--quick: nothing to shorten, every layer on dev, the best on eval)
    cmd = [sys.executable, "-m", "downstream_recipes.cli", "superb", "run", "--task", "qbe", "-u", "usad", "-k", str(ckpt),
           "--data", str(corpora / "quesst14Database"), "--runs-dir", str(runs), "--quick", "--workers", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[QbE] layer 1 of 2:" in done.stdout and "test mtwv: " in done.stdout

    asv = runs / "superb" / "ASV" / "usad-tiny1"
    assert (asv / "s3prl_cache" / "sv_voxceleb1" / ".wav_lengths" / "Voxceleb1_length.pt").is_file()
    package = Path(importlib.util.find_spec("s3prl.downstream.sv_voxceleb1").origin).parent  # type: ignore[arg-type]
    assert not (package / ".wav_lengths").exists()  # s3prl's own package folder stays clean
    assert (runs / "superb" / "SD" / "usad-tiny1" / "frame_shift").read_text().strip() == "320"

    measured = collect(runs)
    test = measured[measured["split"] == "test"]
    assert sorted(set(test["task"])) == sorted(METRICS)
    for task, metrics in METRICS.items():
        rows = test[test["task"] == task]
        assert list(rows["metric"]) == metrics, task
        assert rows["score"].notna().all() and (rows["status"] == "done").all(), (task, rows)
    scores = dict(zip(test["task"] + ":" + test["metric"], test["score"]))
    assert 0 <= scores["ER:acc"] <= 100 and 0 <= scores["ASV:eer"] <= 100 and -1e6 < scores["QbE:mtwv"] <= 1.0
    md = render(measured, load_published(), tmp_path / "board")["md"].read_text()
    assert "(6 tasks)" in md  # the SUPERB score covers the tasks present


def test_snips_plan_never_shares_a_sentence_between_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from downstream_recipes.corpora import snips

    # three possible sentences only: the valid and test voices must avoid what train said
    monkeypatch.setattr(snips, "TEMPLATES", (("PlayMusic", "play {genre}"),))
    monkeypatch.setattr(snips, "VALUES", {"genre": ("jazz", "blues", "soul")})
    voice = sources.voice_pool(0)[0]
    cast = {"Ivy": ("train", voice), "Aditi": ("valid", voice), "Brian": ("test", voice)}
    jobs = snips.plan(cast, 2, random.Random(0))
    by_split: dict[str, set[str]] = defaultdict(set)
    for _, split, _, words, tags, intent in jobs:
        by_split[split].add(" ".join(words))
        assert tags == ["O", "genre"] and intent == "PlayMusic"
    assert not by_split["train"] & by_split["valid"] and not by_split["train"] & by_split["test"]
    assert not by_split["valid"] & by_split["test"] and by_split["train"]
