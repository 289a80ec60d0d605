"""Build orchestrator: resumable stages, each built in a staging folder, moved into place
atomically, then marked done. A finished stage is never rebuilt; a folder built with another
size or seed is refused rather than mixed."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

from . import (fluent, hear, iemocap, librimix, librispeech, pool, quesst, snips, sources, speech_commands, voxceleb,
               voxceleb_sv, xares_tasks)
from .common import SIZES, Size

log = logging.getLogger(__name__)

# stage name -> (folder, builder(root, size, seed, out))
STAGES: dict[str, tuple[str, Callable[[Path, Size, int, Path], None]]] = {
    "librispeech": ("LibriSpeech", lambda root, size, seed, out: librispeech.build(root, size, seed)),
    "speech_commands": ("speech_commands", lambda root, size, seed, out: speech_commands.build(root, size, seed)),
    "voxceleb1": ("VoxCeleb1", lambda root, size, seed, out: voxceleb.build(root, size, seed)),
    "fluent_speech_commands": ("fluent_speech_commands", lambda root, size, seed, out: fluent.build(root, size, seed)),
    "hear": ("hear", lambda root, size, seed, out: hear.build(root, out / "speech_commands", size, seed)),
    "pool": ("pool", lambda root, size, seed, out: pool.build(root, size, seed)),
    "iemocap": ("IEMOCAP_full_release", lambda root, size, seed, out: iemocap.build(root, size, seed)),
    "librimix_sd": ("librimix_sd", lambda root, size, seed, out: librimix.build(
        root, size, seed, out / "LibriSpeech", out / "librimix_sd")),
    "voxceleb1_sv": ("VoxCeleb1_sv", lambda root, size, seed, out: voxceleb_sv.build(root, size, seed)),
    "snips": ("SNIPS", lambda root, size, seed, out: snips.build(root, size, seed)),
    "quesst14": ("quesst14Database", lambda root, size, seed, out: quesst.build(root, size, seed)),
    "xares": ("xares", lambda root, size, seed, out: xares_tasks.build(root, out / "hear", size, seed)),
}
# Stages whose builders read another stage's output (built first when missing, transitively).
NEEDS = {"hear": "speech_commands", "librimix_sd": "librispeech", "xares": "hear"}


def _marker(out: Path, stage: str) -> Path:
    return out / f".{stage}.done"


def build_corpora(out: "str | Path", size: str = "mini", seed: int = 0, stages: "list[str] | None" = None,
                  install: bool = True) -> dict[str, float]:
    """Build every (or the named) stage under `out`; returns seconds per stage (0 when skipped)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    chosen = stages or list(STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected some of {list(STAGES)}")
    added = True
    while added:  # what the chosen stages read, and what that reads (xares -> hear -> speech_commands)
        missing = [need for stage, need in NEEDS.items()
                   if stage in chosen and need not in chosen and not _marker(Path(out), need).is_file()]
        chosen, added = missing + chosen, bool(missing)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = {"size": size, "seed": seed}
    timings: dict[str, float] = {}
    timings["apt"] = sources.ensure_packages(sources.packages_for(size), install)
    for stage in STAGES:
        if stage not in chosen:
            continue
        folder, builder = STAGES[stage]
        marker = _marker(out, stage)
        if marker.is_file():
            done = json.loads(marker.read_text())
            built = {k: done.get(k) for k in params}
            if built != params:
                raise ValueError(f"{out / folder} was built with {built}, not {params}; use another --out")
            log.info("%s: already built, skipping", stage)
            timings[stage] = 0.0
            continue
        staging = out / ".staging" / folder
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        start = time.time()
        log.info("%s: building (%s, seed %d)", stage, size, seed)
        builder(staging, SIZES[size], seed, out)
        final = out / folder
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        if stage == "pool":  # manifest paths were written inside the staging folder
            manifest = final / "manifest.tsv"
            manifest.write_text(manifest.read_text().replace(str(staging.resolve()), str(final.resolve())))
        timings[stage] = round(time.time() - start, 1)
        marker.write_text(json.dumps(dict(params, seconds=timings[stage])))
        log.info("%s: done in %.1f s", stage, timings[stage])
    shutil.rmtree(out / ".staging", ignore_errors=True)
    _index(out)
    return timings


# where each corpus plugs into the real recipes
USAGE = {
    "librispeech": "s3prl -d ctc (libriphone): corpus.path=<dir>, corpus.lexicon=[<dir>/lexicon.txt], "
    "text.vocab_file=<dir>/phoneme.txt; -d asr: datarc.libri_root=<dir>, datarc.bucket_file=<dir>/len_for_bucket, "
    "datarc.dict_path=<dir>/char.dict",
    "speech_commands": "s3prl -d speech_commands: datarc.speech_commands_root=<dir>/speech_commands_v0.01, "
    "datarc.speech_commands_test_root=<dir>/speech_commands_test_set_v0.01",
    "voxceleb1": "s3prl -d voxceleb1: datarc.file_path=<dir>, datarc.meta_data=<dir>/iden_split.txt",
    "fluent_speech_commands": "s3prl -d fluent_commands: datarc.file_path=<dir>",
    "hear": "heareval: --tasks-dir <dir>/tasks",
    "pool": "usad distill: data.manifests=[<dir>/manifest.tsv]",
    "iemocap": "s3prl -d emotion: datarc.root=<dir>, datarc.meta_data=<meta_data from s3prl's IEMOCAP_preprocess.py "
    "(usad superb run --task ER makes it)>",
    "librimix_sd": "s3prl -d diarization: loaderrc.{train,dev,test}_dir=<dir>/{train,dev,test}",
    "voxceleb1_sv": "s3prl -d sv_voxceleb1: datarc.file_path=<dir>, datarc.test_meta_data=<dir>/voxceleb1_test_v2.txt",
    "snips": "s3prl -d ctc (snips): corpus.path=<dir>, text.slots_file=<dir>/slots.txt, text.vocab_file=<dir>/character.txt",
    "quesst14": "s3prl -d quesst14_dtw: datarc.dataset_root=<dir>; score benchmark.stdlist.xml with "
    "downstream_recipes/superb/quesst_score.py against <dir>/scoring/groundtruth_quesst14_{dev,eval}",
    "xares": "usad xares run -k CKPT --tasks <dir> (X-ARES's own runner)",
}


def _index(out: Path) -> None:
    """OUT/README.md: what is built, with which size/seed/time, and how each plugs into a recipe."""
    lines = ["# USAD local benchmark corpora", "", "| corpus | folder | size | seed | build s | use with |", "|---|---|---|---|---|---|"]
    for stage, (folder, _) in STAGES.items():
        marker = _marker(out, stage)
        if marker.is_file():
            done = json.loads(marker.read_text())
            lines.append(f"| {stage} | [{folder}]({folder}/README.md) | {done['size']} | {done['seed']} | {done['seconds']} | "
                         f"{USAGE[stage].replace('<dir>', str((out / folder).resolve()))} |")
    lines += ["", "Each folder has a README.md datasheet (counts, durations, speakers, sources, licences, splits). "
              "Validate with `usad corpora check " + str(out) + "`."]
    (out / "README.md").write_text("\n".join(lines) + "\n")
