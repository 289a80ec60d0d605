"""One way to name a checkpoint: our student .safetensors, a release snapshot directory, or a hub id.

    resolve_checkpoint("student.safetensors")      -> kind "student"
    resolve_checkpoint("snapshots/USAD-Base")      -> kind "release" (the release's own code runs it)
    resolve_checkpoint("MIT-SLS/USAD-Base")        -> the same, from the Hugging Face cache (or the hub)
    resolve_checkpoint("exported/")                -> kind "export" (`usad export --hf`: loads natively)

A snapshot's layout is read from its config.json alone (auto_map, model_type, the frame-rate
fields), never from file names: USAD 2.0's file names are not known here. Nothing is imported
or run while resolving.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import FORMAT

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOOLKIT_KEY = "usad_toolkit"  # config.json field written by `usad export --hf`
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# The licences the MIT-SLS model cards state (RELEASED.md), used when a snapshot carries none.
DEFAULT_LICENCES = {1: "bsd-3-clause", 2: "cc-by-nc-sa-4.0"}


class ReleaseError(ValueError):
    """A checkpoint name that cannot be resolved, or a snapshot that cannot be used; one line."""


@dataclass(frozen=True)
class Snapshot:
    """A directory in the Hugging Face layout: config.json + weights + the modeling *.py files."""

    directory: Path
    config: dict
    kind: str  # "release" (official code, needs trust_remote_code) or "export" (ours, loads natively)
    generation: int  # 1 (USAD), 2 (USAD 2.0); 0 for our exports
    model_class: tuple[str, str]  # (module file, class name) from auto_map AutoModel
    config_class: "tuple[str, str] | None"
    weights: tuple[Path, ...]
    code_files: tuple[Path, ...]  # every .py the modeling file needs, nested relative imports included
    licence: str
    licence_source: str

    @property
    def subsample_rate(self) -> int:
        """fbank frames (100 Hz) per output frame: 2 (50 Hz) or 4 (25 Hz)."""
        if "frame_rate" in self.config:
            return int(round(100 / float(self.config["frame_rate"])))
        return int(self.config.get("conv_subsample_rate", 2))

    @property
    def downsample_rate(self) -> int:
        return 160 * self.subsample_rate

    @property
    def frame_rate(self) -> float:
        return 16000 / self.downsample_rate

    def size(self, name: str) -> int:
        """An integer size field of config.json (encoder_dim, num_layers, ...), or a clear error."""
        value = self.config.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReleaseError(f"{self.directory / 'config.json'}: field {name!r} is {value!r}, expected an integer")
        return value


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """What a checkpoint name points to. `hash_files` are the files whose contents identify the
    model (a content hash reads the tensors of the .safetensors among them plus config.json)."""

    source: str  # what the user gave
    kind: str  # "student", "release" or "export"
    path: Path  # the .safetensors file, or the snapshot directory
    snapshot: "Snapshot | None" = None
    hub_id: "str | None" = None
    hash_files: tuple[Path, ...] = field(default=())


def resolve_checkpoint(spec: "str | Path") -> ResolvedCheckpoint:
    """Resolve a checkpoint name without running anything; raises ReleaseError (one line)."""
    text = str(spec).strip()
    if not text:
        raise ReleaseError("no checkpoint given: pass a student .safetensors, a release snapshot directory or a hub id "
                           "such as MIT-SLS/USAD-Base")
    if "://" in text:
        raise ReleaseError(f"{text} is a URL; pass a hub id (MIT-SLS/USAD-Base), a snapshot directory or a .safetensors file")
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix == ".safetensors" and not _is_student_file(path) and (path.parent / "config.json").is_file():
            return _from_directory(text, path.parent)  # a snapshot's weights file: the snapshot is meant
        return ResolvedCheckpoint(text, "student", path, hash_files=(path,))
    if path.is_dir():
        return _from_directory(text, path)
    if HUB_ID.match(text) and not text.endswith(".safetensors"):
        directory = download_snapshot(text)
        return _from_directory(text, directory, hub_id=text)
    raise ReleaseError(f"checkpoint not found: {text} (not a file, not a directory, not a hub id like MIT-SLS/USAD-Base); "
                       "create one with `usad init --size base -o student.safetensors`, or pass a release snapshot")


def _is_student_file(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == FORMAT
    except Exception:  # unreadable: let load_model report it with its own message
        return True


def _from_directory(source: str, directory: Path, hub_id: "str | None" = None) -> ResolvedCheckpoint:
    snapshot = read_snapshot(directory)
    files = (directory / "config.json", *snapshot.weights)
    return ResolvedCheckpoint(source, snapshot.kind, directory, snapshot, hub_id, files)


def read_snapshot(directory: "str | Path") -> Snapshot:
    """Read and check a snapshot directory: config.json, its auto_map, weights, code files, licence."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        if (directory / "checkpoints").is_dir():
            raise ReleaseError(f"{directory}: a `usad distill` run directory, not a checkpoint; make one with "
                               f"`usad export {directory} -o student.safetensors`")
        raise ReleaseError(f"{directory}: no config.json, so not a model snapshot (a student checkpoint is one "
                           ".safetensors file)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ReleaseError(f"{config_path}: expected a JSON object")
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not isinstance(auto_map.get("AutoModel"), str):
        raise ReleaseError(f"{config_path}: no auto_map.AutoModel entry, so there is no modeling code to run "
                           "(a USAD release's config.json maps AutoModel to modeling_usad.USADModel)")
    model_class = _class_ref(auto_map["AutoModel"], config_path)
    config_class = _class_ref(auto_map["AutoConfig"], config_path) if isinstance(auto_map.get("AutoConfig"), str) else None
    kind, generation = _layout(config, config_path)
    weights = _weights(directory)
    roots = [model_class[0]] + ([config_class[0]] if config_class else [])
    code_files = code_closure(directory, roots)
    licence, licence_source = _licence(directory, generation)
    return Snapshot(directory, config, kind, generation, model_class, config_class, weights, code_files,
                    licence, licence_source)


def _class_ref(ref: str, config_path: Path) -> tuple[str, str]:
    ref = ref.split("--")[-1]  # "repo--module.Class" form points into another repo; the file is local here
    module, _, name = ref.rpartition(".")
    if not module or not name:
        raise ReleaseError(f"{config_path}: auto_map entry {ref!r} is not 'module.ClassName'")
    return module.replace(".", "/") + ".py", name


def _layout(config: dict, config_path: Path) -> tuple[str, int]:
    """("export", 0) for our own exports; ("release", 1 or 2) for the official ones."""
    if TOOLKIT_KEY in config:
        return "export", 0
    model_type = str(config.get("model_type", ""))
    if not model_type.lower().startswith("usad"):
        raise ReleaseError(f"{config_path}: model_type {model_type!r} is not a USAD release (expected 'usad', 'usad2', ...)")
    # 25 Hz exists only in USAD 2.0; a model_type naming 2 (usad2, usad_2, usad-v2) says so directly
    two = re.match(r"usad[_-]?v?2", model_type.lower()) is not None or int(config.get("conv_subsample_rate", 2)) == 4
    return "release", 2 if two else 1


def _weights(directory: Path) -> tuple[Path, ...]:
    if (directory / "model.safetensors").is_file():
        return (directory / "model.safetensors",)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ReleaseError(f"{index}: not a safetensors index ({exc})") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise ReleaseError(f"{directory}: weight shard {missing[0]} listed in {index.name} is missing")
        return tuple(directory / s for s in shards)
    raise ReleaseError(f"{directory}: no model.safetensors (or model.safetensors.index.json) beside config.json")


def code_closure(directory: Path, roots: list[str]) -> tuple[Path, ...]:
    """The .py files `roots` need, following relative imports to any depth (what transformers'
    local loading does not); a missing one is named with the file that imports it."""
    seen: dict[str, None] = {}
    todo = [(root, "config.json auto_map") for root in roots]
    while todo:
        name, importer = todo.pop(0)
        if name in seen:
            continue
        path = directory / name
        if not path.is_file():
            raise ReleaseError(f"{directory}: {name} is missing (imported by {importer})")
        seen[name] = None
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError) as exc:
            raise ReleaseError(f"{path}: not readable Python ({exc})") from None
        base = Path(name).parent
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                package = base
                for _ in range(node.level - 1):
                    package = package.parent
                if node.module:
                    todo.append(((package / node.module.replace(".", "/")).as_posix() + ".py", name))
                else:  # from . import a, b
                    todo += [((package / alias.name).as_posix() + ".py", name) for alias in node.names]
    return tuple(directory / name for name in seen)


def _licence(directory: Path, generation: int) -> tuple[str, str]:
    """The licence in the snapshot's model card (README.md front matter `license:`), else the one
    the MIT-SLS cards state for that generation."""
    readme = directory / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        front = re.match(r"^---\s*\n(.*?)\n---", text, flags=re.DOTALL)
        found = re.search(r"^license:\s*['\"]?([\w.+-]+)", front.group(1), flags=re.MULTILINE) if front else None
        if found:
            return found.group(1).lower(), "the snapshot's README.md"
    if generation in DEFAULT_LICENCES:
        name = "USAD 2.0" if generation == 2 else "USAD v1"
        return DEFAULT_LICENCES[generation], f"not in the snapshot; the MIT-SLS {name} model cards state it"
    return "unknown", "not in the snapshot"


def download_snapshot(hub_id: str) -> Path:
    """A hub model's snapshot directory: the Hugging Face cache first, then the hub. If neither
    has it: one line naming the id, the cache looked in and how to pass a local copy."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except ValueError as exc:  # an id huggingface_hub rejects
        raise ReleaseError(f"{hub_id}: not a valid hub id ({exc})") from None
    try:
        HfApi().model_info(hub_id, timeout=15)  # bounded: snapshot_download's own probe has no timeout
        return Path(snapshot_download(hub_id, etag_timeout=15))
    except Exception as exc:  # network, offline mode, missing repo: all end the same way for the user
        text = str(exc).splitlines()[0] if str(exc) else ""
        reason = f"{type(exc).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}" if text else type(exc).__name__
        raise ReleaseError(
            f"{hub_id}: no such local path, and as a hub id it is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and the hub could not be reached "
            f"({reason}); on a machine with access run `huggingface-cli download {hub_id} --local-dir DIR`, copy DIR "
            "here and pass DIR instead of the id"
        ) from None
