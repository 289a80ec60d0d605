"""Read scores out of an s3prl `run_downstream` experiment directory.

s3prl has no single results file; each expert reports differently:
- classification experts (speech_commands, fluent_commands, voxceleb1, emotion) append
  `dev at step N: 0.93` / `New best on dev ...` / `test at step N: ...` to `log.log`;
- every expert prints `<split> <metric>: <value>` (ctc, asr, classification),
  `mode <split> acc <a> der <d>` (diarization) or `sv-voxceleb1/<split>-EER: <v>` to stdout;
- during training every expert writes `<task>/<split>-<metric>` scalars to tensorboard event
  files in the experiment directory (evaluate mode writes them to a deleted temp dir).

The recipes tee stdout of each stage into `usad_train.log` / `usad_test.log`; the test stage
evaluates the best-dev checkpoint, so a score in `usad_test.log` is *the* test score. Without
it (an experiment run by hand), the test score logged at the best dev step is used, which is
the SUPERB protocol when `eval_dataloaders` lists dev and test.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import yaml

TRAIN_LOG = "usad_train.log"
TEST_LOG = "usad_test.log"

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
_LOGLOG = re.compile(rf"^(?P<new>New best on )?(?P<split>[\w-]+) at step (?P<step>\d+): {_NUM}$")
_PRINTED = re.compile(rf"^(?P<split>(?:dev|test|valid)[\w-]*) (?P<metric>[A-Za-z_][\w]*): {_NUM}$")
_DIARIZATION = re.compile(rf"^mode (?P<split>[\w-]+) acc {_NUM} der {_NUM}$")
_SV = re.compile(rf"^sv-voxceleb1/(?P<split>[\w-]+)-EER: {_NUM}$")


@dataclass(frozen=True)
class Observation:
    """One logged score. `split` is normalised to dev/test; `step` is None when not logged."""

    split: str
    metric: str
    value: float
    step: "int | None"
    source: str  # "test-stage", "log.log", "stdout", "tensorboard"


def normalise_split(split: str) -> "str | None":
    """dev-clean -> dev, test-clean -> test, valid -> dev; anything else (train) -> None."""
    s = split.lower()
    if s.startswith("dev") or s.startswith("valid"):
        return "dev"
    if s.startswith("test"):
        return "test"
    return None


def _lines(path: Path) -> Iterator[str]:
    # tqdm redraws with \r; split on it so progress bars never glue onto a score line.
    text = path.read_text(errors="replace")
    for line in re.split(r"[\r\n]+", text):
        line = line.strip()
        if line:
            yield line


def parse_log_log(path: Path, metric: str = "acc") -> list[Observation]:
    """`log.log` of the classification experts; they only write accuracy there."""
    out = []
    for line in _lines(path):
        m = _LOGLOG.match(line)
        if m and not m.group("new"):
            split = normalise_split(m.group("split"))
            if split:
                out.append(Observation(split, metric, float(m.group(4)), int(m.group("step")), "log.log"))
    return out


def parse_stdout(path: Path, source: str) -> list[Observation]:
    """Score lines that s3prl experts print to stdout (captured by the recipes)."""
    out = []
    for line in _lines(path):
        m = _PRINTED.match(line)
        if m:
            split = normalise_split(m.group("split"))
            if split and m.group("metric") != "loss":
                out.append(Observation(split, m.group("metric").lower(), float(m.group(3)), None, source))
            continue
        m = _DIARIZATION.match(line)
        if m:
            split = normalise_split(m.group("split"))
            if split:
                out.append(Observation(split, "acc", float(m.group(2)), None, source))
                out.append(Observation(split, "der", float(m.group(3)), None, source))
            continue
        m = _SV.match(line)
        if m:
            split = normalise_split(m.group("split"))
            if split:
                out.append(Observation(split, "eer", float(m.group(2)), None, source))
    return out


_FRAME = re.compile(r'^File "(?P<file>[^"]+)", line (?P<line>\d+)')
_ERROR = re.compile(r"\berror\b", re.IGNORECASE)


def failure_line(log: Path) -> str:
    """Why the last command in a recipe log failed, in one line: the exception that ended its
    traceback and the frame that raised it (path shortened to the package), else the last line
    naming an error, else the last line. The recipes put this in their error message so that a
    failure says what went wrong, not only where the log is."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return f"no log at {log}"
    last_run = text.rsplit("\n=== ", 1)[-1]  # the recipes start each command with a '=== time $ cmd' line
    lines = [line.strip() for line in re.split(r"[\r\n]+", last_run) if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        tail = lines[starts[-1] + 1 :]
        frames = [m for m in map(_FRAME.match, tail) if m]
        exc = next((line for line in reversed(tail) if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line)), None)
        if exc:
            if not frames:
                return exc
            where = re.sub(r"^.*/(site-packages|downstream_recipes|usad_upstream)/", r"\1/", frames[-1].group("file"))
            return f"{exc} (raised at {where.replace('site-packages/', '')}:{frames[-1].group('line')})"
    named = [line for line in lines if _ERROR.search(line) and not line.startswith("===")]
    if named:
        return named[-1]
    return lines[-1] if lines else "the command printed nothing"


def _tfrecords(path: Path) -> Iterator[bytes]:
    """Records of a tensorboard event file (TFRecord framing; CRCs are not checked)."""
    with path.open("rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return  # a record cut short by a run that is still writing
            yield data


def parse_tensorboard(path: Path) -> list[Observation]:
    """Scalars `<task>/<split>-<metric>` from a tensorboard event file written by the runner."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for record in _tfrecords(path):
        event = Event()
        try:
            event.ParseFromString(record)
        except Exception:  # noqa: BLE001 - a torn record at the end of a live file
            continue
        for value in event.summary.value:
            tag = value.tag.rsplit("/", 1)[-1]
            if "-" not in tag or not value.HasField("simple_value"):
                continue
            split_name, metric = tag.rsplit("-", 1)
            split = normalise_split(split_name)
            if split and metric.lower() != "loss":
                out.append(Observation(split, metric.lower(), float(value.simple_value), int(event.step), "tensorboard"))
    return out


def observations(expdir: Path) -> list[Observation]:
    """Every score logged in an s3prl experiment directory, from all the formats above."""
    expdir = Path(expdir)
    obs: list[Observation] = []
    if (expdir / "log.log").is_file():
        obs += parse_log_log(expdir / "log.log")
    for event_file in sorted(expdir.glob("events.out.tfevents.*")):
        obs += parse_tensorboard(event_file)
    if (expdir / TRAIN_LOG).is_file():
        obs += parse_stdout(expdir / TRAIN_LOG, "stdout")
    if (expdir / TEST_LOG).is_file():
        obs += [o for o in parse_stdout(expdir / TEST_LOG, "test-stage") if o.split == "test"]
    return obs


@dataclass(frozen=True)
class TaskScores:
    """Best dev score and the matching test score of one experiment (raw s3prl units)."""

    metric: str
    dev: "float | None"
    dev_step: "int | None"
    test: "float | None"
    test_source: "str | None"


def _best(values: Iterable[Observation], higher_is_better: bool) -> "Observation | None":
    vals = list(values)
    if not vals:
        return None
    # On ties the earliest step wins, as s3prl only saves a new best on strict improvement.
    key = (lambda o: o.value) if higher_is_better else (lambda o: -o.value)
    best = vals[0]
    for o in vals[1:]:
        if key(o) > key(best):
            best = o
    return best


def select_scores(obs: list[Observation], metric: str, higher_is_better: bool,
                  follow: "TaskScores | None" = None) -> TaskScores:
    """The SUPERB protocol: best dev score; test score of the best-dev checkpoint. With `follow`
    (the primary metric's selection), a secondary metric is read at the primary's best dev step
    instead of at its own best."""
    mine = [o for o in obs if o.metric == metric]
    dev_obs = [o for o in mine if o.split == "dev"]
    # The same dev evaluation may appear in several formats; prefer ones that carry a step.
    stepped = [o for o in dev_obs if o.step is not None]
    best_dev = _best(stepped or dev_obs, higher_is_better)
    if follow is not None and follow.dev_step is not None:
        best_dev = next((o for o in stepped if o.step == follow.dev_step), best_dev)
    test_obs = [o for o in mine if o.split == "test"]
    test_stage = [o for o in test_obs if o.source == "test-stage"]
    test: "Observation | None"
    if best_dev is None:
        # No dev split at all (ASV scores every kept checkpoint on test): the best test score.
        test = _best(test_stage or test_obs, higher_is_better)
    elif test_stage:
        test = test_stage[-1]  # the recipe evaluated the best-dev checkpoint
    else:
        at_best = [o for o in test_obs if best_dev.step is not None and o.step == best_dev.step]
        test = at_best[-1] if at_best else None
    return TaskScores(
        metric=metric,
        dev=best_dev.value if best_dev else None,
        dev_step=best_dev.step if best_dev else None,
        test=test.value if test else None,
        test_source=test.source if test else None,
    )


class _TolerantLoader(yaml.SafeLoader):
    """Safe loading that turns python-specific tags (rare in s3prl dumps) into None."""


_TolerantLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def _newest_yaml(expdir: Path, prefix: str) -> dict:
    files = sorted(Path(expdir).glob(f"{prefix}_*.yaml"))
    if not files:
        return {}
    try:
        data = yaml.load(files[-1].read_text(), Loader=_TolerantLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"{files[-1]}: not valid YAML ({exc})") from None
    return data if isinstance(data, dict) else {}


def read_args(expdir: Path) -> dict:
    """The newest `args_<time>.yaml` s3prl saved (upstream, ckpt, downstream, ...), or {}."""
    return _newest_yaml(expdir, "args")


def read_config(expdir: Path) -> dict:
    """The newest `config_<time>.yaml` s3prl saved, or {}."""
    return _newest_yaml(expdir, "config")
