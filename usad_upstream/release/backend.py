"""The official releases through their OWN modeling code, behind this toolkit's encoder contract.

The snapshot directory is imported as a Python package of its own (a unique name per directory
and code version), so relative imports work to any depth: transformers' AutoModel on a local
snapshot copies only the modeling file's direct relative imports and fails on the release's
modeling_usad.py -> usad_model.py -> usad_modules.py. The class named by auto_map then loads the
weights with transformers' own `from_pretrained`. Running those files runs someone else's code,
so it happens only with `trust_remote_code` (or USAD_TRUST_REMOTE_CODE=1).

`ReleaseEncoder` gives every item of a padded batch what the release gives it alone (the release
has no padding mask: items run in groups of equal length), and returns what `UsadModel.forward`
returns: `embedding`, `hidden_states`, `ffn`, `x`, `lengths`, `fbank`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
import types
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ..compat import import_torchaudio
from ..frontend import check_waveforms
from .resolve import ReleaseError, Snapshot

TRUST_ENV = "USAD_TRUST_REMOTE_CODE"


def remote_code_allowed(trust_remote_code: "bool | None" = None) -> bool:
    """True when the caller opted in: trust_remote_code=True, or USAD_TRUST_REMOTE_CODE=1."""
    return bool(trust_remote_code) or os.environ.get(TRUST_ENV, "").strip() == "1"


def require_trust(snapshot: Snapshot, trust_remote_code: "bool | None", converting: bool = False) -> None:
    if not remote_code_allowed(trust_remote_code):
        files = ", ".join(p.name for p in snapshot.code_files)
        alternative = ("" if converting else f", or convert it once to a native checkpoint (no remote code "
                       f"afterwards): usad convert {snapshot.directory} -o student.safetensors --trust-remote-code")
        raise ReleaseError(
            f"{snapshot.directory} runs its own Python code ({files}){' as the reference of the check' if converting else ''}; "
            f"allow it with --trust-remote-code, trust_remote_code=True in Python, or {TRUST_ENV}=1 "
            f"(s3prl -k, heareval){alternative}"
        )


def import_snapshot_class(snapshot: Snapshot, ref: tuple[str, str]) -> type:
    """Import `ref` = (module file, class name) from the snapshot as a package of its own."""
    import_torchaudio()  # the release imports torchaudio at top level; on a CPU stack only this import works
    digest = hashlib.sha1(str(snapshot.directory.resolve()).encode())
    for path in snapshot.code_files:
        digest.update(path.read_bytes())
    package = f"usad_snapshot_{digest.hexdigest()[:16]}"
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [str(snapshot.directory.resolve())]
        sys.modules[package] = module
    module_name = f"{package}.{ref[0][:-3].replace('/', '.')}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(package):
            raise ReleaseError(f"{snapshot.directory}: {exc.name[len(package) + 1:]} is missing (imported by its code)") from None
        raise ReleaseError(f"{snapshot.directory / ref[0]} needs the Python package {exc.name!r}, which is not "
                           f"installed (pip install {exc.name})") from None
    except Exception as exc:  # noqa: BLE001 - someone else's code: any failure becomes one line
        raise ReleaseError(f"{snapshot.directory / ref[0]}: importing it failed ({type(exc).__name__}: {exc})") from None
    cls = getattr(module, ref[1], None)
    if not isinstance(cls, type):
        raise ReleaseError(f"{snapshot.directory / ref[0]} defines no class {ref[1]!r} (named by config.json auto_map)")
    return cls


def load_release_module(snapshot: Snapshot, trust_remote_code: "bool | None" = None, converting: bool = False) -> nn.Module:
    """The release's model (its auto_map AutoModel class, its weights), eval mode, fp32, on CPU."""
    require_trust(snapshot, trust_remote_code, converting)
    model_cls = import_snapshot_class(snapshot, snapshot.model_class)
    kwargs: dict = {}
    if snapshot.config_class is not None:
        config_cls = import_snapshot_class(snapshot, snapshot.config_class)
        try:
            kwargs["config"] = config_cls.from_pretrained(str(snapshot.directory))
        except Exception as exc:  # noqa: BLE001
            raise ReleaseError(f"{snapshot.directory / 'config.json'}: {snapshot.config_class[1]} cannot read it "
                               f"({type(exc).__name__}: {exc})") from None
    try:
        model, info = model_cls.from_pretrained(str(snapshot.directory), output_loading_info=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - shape mismatches and broken files end here
        first = str(exc).strip().splitlines()
        raise ReleaseError(f"{snapshot.weights[0]}: the weights do not fit {snapshot.model_class[1]} "
                           f"({type(exc).__name__}: {' '.join(first[:2])[:300]})") from None
    problems = [f"{what} {sorted(info[key])[:3]}" for key, what in
                (("missing_keys", "missing"), ("unexpected_keys", "unexpected"), ("mismatched_keys", "wrong shape"))
                if info.get(key)]
    if problems:
        raise ReleaseError(f"{snapshot.weights[0]}: the weights do not fit {snapshot.model_class[1]}: {'; '.join(problems)}")
    return model.float().eval()


@dataclass(frozen=True)
class ReleaseSizes:
    """What consumers read from an encoder's `config` (the names of UsadConfig's fields)."""

    dim: int
    layers: int
    heads: int
    name: str


class ReleaseEncoder(nn.Module):
    """A release model with UsadModel's call contract; see the module docstring."""

    def __init__(self, release: nn.Module, snapshot: Snapshot, target_layer: "int | None" = None,
                 autocast_dtype: "torch.dtype | None" = None) -> None:
        super().__init__()
        self.release = release.eval()
        self.snapshot = snapshot
        layers = snapshot.size("num_layers")
        if target_layer is not None and not (isinstance(target_layer, int) and 1 <= target_layer <= layers):
            raise ReleaseError(f"target_layer must be a block index from 1 to {layers}, got {target_layer!r}")
        self.target_layer = target_layer
        self.autocast_dtype = autocast_dtype
        self.config = ReleaseSizes(snapshot.size("encoder_dim"), target_layer or layers,
                                   snapshot.size("num_attention_heads"), snapshot.directory.name)
        self._block_one = (_first_block(release, layers),)  # a tuple: not registered as a submodule twice

    @property
    def downsample_rate(self) -> int:
        return self.snapshot.downsample_rate

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.release.parameters())

    def train(self, mode: bool = True) -> "ReleaseEncoder":
        return super().train(False)  # a release is a frozen feature extractor here: no dropout, ever

    def forward(self, wavs: torch.Tensor, wav_lens: "torch.Tensor | None" = None) -> dict[str, object]:
        """Padded batch [B, N] at 16 kHz -> the dict UsadModel.forward returns, item by item exact."""
        lens = check_waveforms(wavs, wav_lens)
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lens.tolist()):
            groups.setdefault(n, []).append(i)
        rows: list = [None] * wavs.shape[0]
        for n, items in groups.items():  # equal lengths need no padding, so no mask
            out = self._run(wavs[items, :n])
            for j, i in enumerate(items):
                rows[i] = {key: value[j] if isinstance(value, torch.Tensor) else [v[j] for v in value]
                           for key, value in out.items()}
        return _collate(rows)

    def _run(self, wavs: torch.Tensor) -> dict[str, object]:
        kwargs = {} if self.target_layer is None else {"target_layer": self.target_layer}
        autocast = (torch.autocast(wavs.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with _capture_inputs(self._block_one[0]) as block_inputs, autocast:
            try:
                out = self.release(wavs, **kwargs)
            except TypeError as exc:
                if "target_layer" in str(exc):
                    raise ReleaseError(f"{self.snapshot.directory}: this release's forward takes no target_layer "
                                       "(USAD 2.0's does); choose layers downstream instead") from None
                raise
        return map_outputs(out, self.config.layers, block_inputs, self.snapshot)


def _first_block(release: nn.Module, layers: int) -> "nn.Module | None":
    """The first transformer block: the one ModuleList of exactly `layers` modules."""
    lists = [m for m in release.modules() if isinstance(m, nn.ModuleList) and len(m) == layers]
    return lists[0][0] if len(lists) == 1 else None


@contextlib.contextmanager
def _capture_inputs(module: "nn.Module | None") -> Iterator[list[torch.Tensor]]:
    """Collect the tensors entering `module` (once per 30 s window of the release)."""
    seen: list[torch.Tensor] = []
    if module is None:
        yield seen
        return
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]) if args and torch.is_tensor(args[0]) else None)
    try:
        yield seen
    finally:
        handle.remove()


def map_outputs(out: object, layers: int, block_inputs: list[torch.Tensor], snapshot: Snapshot) -> dict[str, object]:
    """The release's dict (x, mel, hidden_states, ffn) -> ours. hidden_states of L + 1 entries
    start with the input embedding; of L entries, the embedding is the output's `embedding` if it
    has one, else what entered block 1."""
    get = out.get if hasattr(out, "get") else (lambda key, default=None: getattr(out, key, default))
    hidden = list(get("hidden_states") or [])
    ffn = list(get("ffn") or [])
    if len(hidden) == layers + 1:
        embedding, hidden = hidden[0], hidden[1:]
    elif len(hidden) == layers:
        embedding = get("embedding")
        if embedding is None and block_inputs:
            embedding = torch.cat(block_inputs, dim=1)
    else:
        raise ReleaseError(f"{snapshot.directory}: the release returned {len(hidden)} hidden states for {layers} "
                           "blocks (expected one per block, optionally the input embedding first)")
    x = get("x")
    if x is None or (ffn and len(ffn) != layers):
        raise ReleaseError(f"{snapshot.directory}: the release's output lacks 'x' or has {len(ffn)} ffn entries "
                           f"for {layers} blocks")
    t = hidden[-1].shape[1]
    if embedding is not None and embedding.shape[1] != t:
        embedding = None  # the hook saw something else than the frames of block 1
    mel = get("mel")
    result: dict[str, object] = {"hidden_states": hidden, "x": x, "lengths": torch.full((x.shape[0],), t)}
    if ffn:
        result["ffn"] = ffn
    if embedding is not None:
        result["embedding"] = embedding
    if torch.is_tensor(mel):
        result["fbank"] = mel
    return result


def _collate(rows: list[dict]) -> dict[str, object]:
    """Per-item outputs (unbatched) -> one zero-padded batch, like UsadModel's."""
    out: dict[str, object] = {"lengths": torch.stack([r["lengths"] for r in rows])}
    for key in ("embedding", "x", "fbank"):
        if all(key in r for r in rows):
            out[key] = pad_sequence([r[key] for r in rows], batch_first=True)
    for key in ("hidden_states", "ffn"):
        if all(key in r for r in rows):
            out[key] = [pad_sequence(list(layer), batch_first=True) for layer in zip(*(r[key] for r in rows))]
    return out

