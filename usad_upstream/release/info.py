"""`usad info CKPT`: what a checkpoint is, for every form the resolver takes. A release snapshot is
described from its files alone (config.json, the safetensors header, the model card); its code
runs only when asked (--trust-remote-code), to check that it loads."""
from __future__ import annotations

import json

from .resolve import ResolvedCheckpoint, Snapshot, resolve_checkpoint


def header_parameters(snapshot: Snapshot) -> int:
    """Parameter count from the safetensors headers (no tensor is read, no code runs)."""
    from safetensors import safe_open

    total = 0
    for path in snapshot.weights:
        if path.suffix != ".safetensors":
            continue
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                count = 1
                for dim in handle.get_slice(key).get_shape():
                    count *= dim
                total += count
    return total


def describe(spec: str, trust_remote_code: "bool | None" = None) -> str:
    resolved = resolve_checkpoint(spec)
    if resolved.kind == "release":
        return _describe_release(resolved, trust_remote_code)
    from ..checkpoint import read_safetensors
    from . import load_encoder

    model = load_encoder(resolved)
    lines = [json.dumps(model.config.to_dict(), indent=2), f"parameters: {model.num_parameters():,}"]
    if resolved.kind == "student":
        metadata = read_safetensors(resolved.path)[1]
        if "license" in metadata:
            lines.append(f"licence: {metadata['license']} ({metadata.get('license_source', 'as converted')})")
        for key in ("converted_from", "distilled_from", "distilled_step"):
            if key in metadata:
                lines.append(f"{key.replace('_', ' ')}: {metadata[key]}")
    else:
        lines.append(f"{resolved.path}: a `usad export --hf` snapshot (loads natively, no remote code)")
    return "\n".join(lines)


def _describe_release(resolved: ResolvedCheckpoint, trust_remote_code: "bool | None") -> str:
    snap = resolved.snapshot
    assert snap is not None
    cfg = snap.config
    where = f"{resolved.hub_id} -> {snap.directory}" if resolved.hub_id else str(snap.directory)
    name = "USAD 2.0" if snap.generation == 2 else "USAD v1"
    lines = [
        f"{where}: official release snapshot ({name} layout by config.json: model_type {cfg.get('model_type')!r}, "
        f"AutoModel {snap.model_class[0][:-3]}.{snap.model_class[1]})",
        f"sizes: encoder_dim {cfg.get('encoder_dim')}, num_layers {cfg.get('num_layers')}, "
        f"heads {cfg.get('num_attention_heads')}, {snap.frame_rate:g} Hz (downsample rate {snap.downsample_rate})",
        f"parameters: {header_parameters(snap):,} (safetensors header)",
        f"licence: {snap.licence} ({snap.licence_source})",
        f"code: {', '.join(p.name for p in snap.code_files)} (runs only with --trust-remote-code / "
        "USAD_TRUST_REMOTE_CODE=1; `usad convert` makes a native checkpoint)",
        "weights: " + ", ".join(p.name for p in snap.weights),
    ]
    if trust_remote_code:
        from . import load_encoder

        encoder = load_encoder(resolved, trust_remote_code=True)
        lines.append(f"loads through its own code: {encoder.num_parameters():,} parameters")
    return "\n".join(lines)
