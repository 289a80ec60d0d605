"""`usad export ... --hf DIR`: a student in the official release's format.

DIR gets config.json (auto_map, model_type "usad"), model.safetensors (`model.`-prefixed keys),
the modeling files (two hand-written transformers classes from hf_files/ plus our own model code,
bundled from usad_upstream's source by bundle.py) and a model card. The export is checked before
it is moved into place: loaded through its own files and compared with the native model.
`AutoModel.from_pretrained(DIR, trust_remote_code=True)` then needs only torch, torchaudio and
transformers. This toolkit reads such a directory back natively (config.json `usad_toolkit`).
"""
from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..model import UsadModel, build_model
from ..presets import UsadConfig
from .bundle import PREFIX, bundle
from .resolve import TOOLKIT_KEY, ReleaseError, Snapshot, read_snapshot

TEMPLATES = Path(__file__).parent / "hf_files"
MODELING = "modeling_usad.py"
CONFIGURATION = "configuration_usad.py"
MARKER = "# {BUNDLED_IMPORTS}"
EXPORT_TOLERANCE = 1e-5


@dataclass
class ModelCard:
    """What the model card says beyond the sizes: where the student came from."""

    source: str = ""
    licence: str = ""
    teachers: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)


def modeling_files() -> dict[str, str]:
    """File name -> text of every .py an export carries; the bundled modules are imported directly
    by modeling_usad.py (transformers copies only those into its module cache)."""
    template = (TEMPLATES / MODELING).read_text()
    roots: dict[str, set[str]] = {}
    for node in ast.parse(template).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module.startswith(PREFIX):
            roots.setdefault(node.module[len(PREFIX):], set()).update(a.name for a in node.names)
    bundled = bundle(roots)
    direct = {f"{PREFIX}{m}.py" for m in roots}
    extra = [f"from .{name[:-3]} import __name__ as _{name[:-3]}  # bundled: copied beside this file"
             for name in sorted(set(bundled) - direct)]
    files = {MODELING: template.replace(MARKER + "\n", "".join(line + "\n" for line in extra)),
             CONFIGURATION: (TEMPLATES / CONFIGURATION).read_text()}
    files.update(bundled)
    return files


def _config_json(model: UsadModel) -> dict:
    config = model.config
    return {
        "architectures": ["USADModel"],
        "auto_map": {"AutoConfig": "configuration_usad.USADConfig", "AutoModel": "modeling_usad.USADModel"},
        "model_type": "usad", "torch_dtype": "float32",
        "encoder_dim": config.dim, "num_layers": config.layers, "num_attention_heads": config.heads,
        TOOLKIT_KEY: {"config": config.to_dict(), "version": __version__},
    }


def model_card(model: UsadModel, card: ModelCard) -> str:
    c = model.config
    rate = 16000 / model.downsample_rate
    lines = ["---"] + ([f"license: {card.licence}"] if card.licence else []) + [
        "library_name: transformers", "tags: [audio, speech, music, usad]", "---", "",
        f"# USAD student ({c.name})", "",
        "Exported by the USAD toolkit (`usad export --hf`). Same API as the MIT-SLS USAD releases:", "",
        "```python", "from transformers import AutoModel", "",
        'model = AutoModel.from_pretrained("PATH_OR_ID", trust_remote_code=True).eval()',
        'wav = model.load_audio("audio.wav").unsqueeze(0)  # 16 kHz mono', "out = model(wav)  # x, mel, hidden_states, ffn",
        "```", "",
        "| encoder dim | blocks | heads | FFN | parameters | frame rate |", "|---|---|---|---|---|---|",
        f"| {c.dim} | {c.layers} | {c.heads} | {c.dim * c.ffn_mult} | {model.num_parameters() / 1e6:.2f}M | {rate:g} Hz |", "",
    ]
    if not card.licence:
        lines += ["Licence: not stated; add one to the front matter before publishing.", ""]
    for title, items in (("Teachers", card.teachers), ("Data", card.data), ("Distillation metrics", card.metrics)):
        if items:
            lines += [f"## {title}", ""] + [f"- {item}" for item in items] + [""]
    if card.source:
        lines += [f"Source: `{card.source}`.", ""]
    lines += [f"The files were checked at export: loaded through their own code they match the toolkit's "
              f"native model within {EXPORT_TOLERANCE:g} on every layer.", ""]
    return "\n".join(lines)


def export_hf(model: UsadModel, directory: "str | Path", card: "ModelCard | None" = None) -> Path:
    """Write the snapshot into a new directory (refused if it exists and is not empty), verified."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ReleaseError(f"{directory} already exists and is not an empty directory; choose another --hf DIR")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for name, text in modeling_files().items():
            (staging / name).write_text(text)
        (staging / "config.json").write_text(json.dumps(_config_json(model), indent=2) + "\n")
        state = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "README.md").write_text(model_card(model, card or ModelCard()))
        check_export(read_snapshot(staging), model)
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def check_export(snapshot: Snapshot, model: UsadModel, seconds: float = 3.3) -> None:
    """Load the snapshot through its own files (as transformers would) and compare every output."""
    from .backend import ReleaseEncoder, load_release_module
    from .convert import ConvertError, verify

    exported = ReleaseEncoder(load_release_module(snapshot, trust_remote_code=True), snapshot)
    try:
        verify(exported, model.eval(), (seconds,), EXPORT_TOLERANCE)
    except ConvertError as exc:
        raise ReleaseError(f"the export does not reproduce the model ({exc}); nothing written") from None


def load_export(snapshot: Snapshot) -> UsadModel:
    """A toolkit export read natively: its config.json's UsadConfig and model.safetensors."""
    from safetensors.torch import load_file

    try:
        config = UsadConfig.from_dict(snapshot.config[TOOLKIT_KEY]["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReleaseError(f"{snapshot.directory / 'config.json'}: {TOOLKIT_KEY}.config is not a USAD config ({exc})") from None
    state = {}
    for path in snapshot.weights:
        state.update(load_file(str(path)))
    if not all(k.startswith("model.") for k in state):
        raise ReleaseError(f"{snapshot.weights[0]}: expected `model.`-prefixed keys (written by usad export --hf)")
    with torch.device("meta"):
        model = build_model(config)
    missing, unexpected = model.load_state_dict({k[len("model."):]: v for k, v in state.items()}, strict=False, assign=True)
    if missing or unexpected:
        raise ReleaseError(f"{snapshot.weights[0]}: the weights do not fit its config: missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}")
    return model.eval()


def card_from_run(run_dir: "Path | None", metadata: dict[str, str]) -> ModelCard:
    """Teachers, data and the last logged losses of a distillation run directory, when there is one."""
    import yaml

    card = ModelCard(source=metadata.get("distilled_from") or metadata.get("converted_from", ""),
                     licence=metadata.get("license", ""))
    if run_dir is None:
        return card
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text()) or {}
        for name, spec in (config.get("teachers") or {}).items():
            spec = spec or {}
            what = spec.get("name") or Path(str(spec.get("path", ""))).name
            card.teachers.append(f"{name}: {spec.get('kind')} `{what}` (target {spec.get('target', 'ffn')}, "
                                 f"domain {spec.get('domain', 'not set')})")
        data = config.get("data") or {}
        card.data += [f"manifest `{Path(str(m)).name}`" for m in data.get("manifests", [])]
        if data.get("domain_weights"):
            card.data.append(f"domain weights {data['domain_weights']}")
    metrics_path = run_dir / "metrics.csv"
    if metrics_path.is_file():
        with metrics_path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            last = rows[-1]
            card.metrics.append(f"step {last.get('step')}: distillation loss {float(last['loss']):.4f} (metrics.csv)")
            card.metrics += [f"{k} {float(v):.4f}" for k, v in last.items() if k.startswith("loss/") and v]
    return card
