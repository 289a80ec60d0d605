"""What each benchmark task is called, which metric ranks it and in which direction.

One catalogue serves the log parsers (s3prl experts, HEAR task directories), the score formulas
and the published tables, so a task has exactly one canonical name everywhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SUPERB = "SUPERB"
HEAR = "HEAR"
XARES = "X-ARES"
# X-ARES's two protocols on frozen embeddings: a trained linear probe ("MLP") and kNN.
XARES_METHODS = {"mlp": "MLP", "knn": "kNN"}


@dataclass(frozen=True)
class SuperbTask:
    """A SUPERB task: its s3prl downstream expert and the metric that ranks it."""

    code: str
    expert: str
    metric: str
    higher_is_better: bool
    # Factor from what the s3prl expert logs to the published unit (percent; MTWV as is).
    scale: float = 100.0
    has_dev: bool = True  # ASV has no dev selection: every kept checkpoint is scored on test
    # Other metrics SUPERB reports for the task, (name, higher_is_better), same scale; they are
    # listed next to the primary one but do not rank the task or enter the SUPERB score.
    secondary: tuple[tuple[str, bool], ...] = ()

    @property
    def metrics(self) -> tuple[tuple[str, bool], ...]:
        """(metric, higher_is_better) pairs, the primary metric first."""
        return ((self.metric, self.higher_is_better), *self.secondary)


SUPERB_TASKS: dict[str, SuperbTask] = {
    t.code: t
    for t in (
        SuperbTask("PR", "ctc", "per", higher_is_better=False),
        SuperbTask("KS", "speech_commands", "acc", higher_is_better=True),
        SuperbTask("IC", "fluent_commands", "acc", higher_is_better=True),
        SuperbTask("SID", "voxceleb1", "acc", higher_is_better=True),
        SuperbTask("ER", "emotion", "acc", higher_is_better=True),
        SuperbTask("ASR", "asr", "wer", higher_is_better=False, scale=1.0),  # asr logs percent
        SuperbTask("SD", "diarization", "der", higher_is_better=False),
        SuperbTask("SF", "ctc", "slot_type_f1", higher_is_better=True, secondary=(("slot_value_cer", False),)),
        SuperbTask("ASV", "sv_voxceleb1", "eer", higher_is_better=False, has_dev=False),
        SuperbTask("QbE", "quesst14_dtw", "mtwv", higher_is_better=True, scale=1.0),
    )
}

# Column names of the published SUPERB tables -> (task, metric). Fine-tuned (_ft) columns and
# aggregate scores are not frozen-probe SUPERB numbers and are left out on purpose.
SUPERB_PUBLISHED_COLUMNS: dict[str, tuple[str, str]] = {
    "PR_per": ("PR", "per"),
    "KS_acc": ("KS", "acc"),
    "KS1_acc": ("KS", "acc"),
    "IC_acc": ("IC", "acc"),
    "SID_acc": ("SID", "acc"),
    "ER_acc": ("ER", "acc"),
    "ASR_wer": ("ASR", "wer"),
    "SD_der": ("SD", "der"),
    "SF_f1": ("SF", "slot_type_f1"),
    "SF_cer": ("SF", "slot_value_cer"),
    "ASV_eer": ("ASV", "eer"),
    "QbE_mtwv": ("QbE", "mtwv"),
}


def superb_task_for_expert(expert: str, corpus_name: "str | None" = None) -> "str | None":
    """Map an s3prl downstream expert (plus the ctc corpus name) to a SUPERB task code."""
    if expert == "ctc":
        return {"libriphone": "PR", "snips": "SF"}.get((corpus_name or "").lower())
    for task in SUPERB_TASKS.values():
        if task.expert == expert:
            return task.code
    return None


@dataclass(frozen=True)
class HearTask:
    """A HEAR 2021 task under the name the USAD paper's Table IV uses."""

    name: str
    task_name: str  # task_metadata.json "task_name"
    variant: "str | None"  # "5h"/"50h"/"full" when the same task exists in several sizes
    metric: str


HEAR_TASKS: tuple[HearTask, ...] = (
    HearTask("Beehive", "beehive_states_fold0", None, "aucroc"),
    HearTask("Beijing Opera", "beijing_opera", None, "top1_acc"),
    HearTask("CREMA-D", "tfds_crema_d", None, "top1_acc"),
    HearTask("DCASE 2016", "dcase2016_task2", None, "event_onset_200ms_fms"),
    HearTask("ESC-50", "esc50", None, "top1_acc"),
    HearTask("FSD50K", "fsd50k", None, "mAP"),
    HearTask("Gunshot", "gunshot_triangulation", None, "top1_acc"),
    HearTask("GTZAN Genre", "tfds_gtzan", None, "top1_acc"),
    HearTask("GTZAN Music/Speech", "tfds_gtzan_music_speech", None, "top1_acc"),
    HearTask("LibriCount", "libricount", None, "top1_acc"),
    HearTask("Maestro 5h", "maestro", None, "event_onset_50ms_fms"),
    HearTask("Mridangam Stroke", "mridangam_stroke", None, "top1_acc"),
    HearTask("Mridangam Tonic", "mridangam_tonic", None, "top1_acc"),
    HearTask("Speech Commands 5h", "speech_commands", "5h", "top1_acc"),
    HearTask("Speech Commands full", "speech_commands", "full", "top1_acc"),
    HearTask("NSynth Pitch 5h", "nsynth_pitch", "5h", "pitch_acc"),
    HearTask("NSynth Pitch 50h", "nsynth_pitch", "50h", "pitch_acc"),
    HearTask("Vocal Imitation", "vocal_imitation", None, "mAP"),
    HearTask("VoxLingua107 top10", "vox_lingua_top10", None, "top1_acc"),
)
HEAR_OFFICIAL = tuple(t.name for t in HEAR_TASKS)

# Column names of the HEAR 2021 leaderboard CSV that differ from the paper's task names.
HEAR_LEADERBOARD_ALIASES: dict[str, str] = {
    "Libricount": "LibriCount",
    "Speech commands 5h": "Speech Commands 5h",
    "Speech commands full": "Speech Commands full",
    "VoxLingua107 top 10": "VoxLingua107 top10",
}


def hear_task_name(task_dir_name: str, task_name: str) -> str:
    """Canonical name of a HEAR task from its directory name and metadata task_name.

    Official tasks get the paper's name (the size variant is read from the directory name,
    e.g. `speech_commands-v0.0.2-5h`); any other task keeps its directory name.
    """
    sizes = set(re.findall(r"(?:^|-)(5h|50h|full)(?:$|-)", task_dir_name))
    for task in HEAR_TASKS:
        if task.task_name != task_name and not (
            task.task_name == "beehive_states_fold0" and task_name.startswith("beehive_states")
        ):
            continue
        if task.variant is None or task.variant in sizes:
            return task.name
    return task_dir_name


def is_primary_metric(benchmark: str, task: str, metric: str) -> bool:
    """Whether `metric` is the one that ranks `task` (SF also logs slot-value CER beside its F1);
    every metric counts for benchmarks and tasks without a SUPERB spec."""
    return benchmark != SUPERB or task not in SUPERB_TASKS or SUPERB_TASKS[task].metric == metric
