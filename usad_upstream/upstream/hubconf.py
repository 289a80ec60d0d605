"""s3prl hub entries for USAD (`-u usad -k CKPT`, `S3PRLUpstream("usad", path_or_url=CKPT)`).

Registration is explicit: `register_s3prl_upstreams()` adds the entries to `s3prl.hub`, the one
table that run_downstream's Runner, `hub.options()` and `s3prl.nn.S3PRLUpstream` look names up in.
"""
from __future__ import annotations

import difflib
import logging
import os
from typing import Callable

from ..checkpoint import HOW_TO_GET
from .expert import UpstreamExpert, UsadUpstreamError
from .teacher_expert import UpstreamBase, usad_teacher


def usad(ckpt: "str | os.PathLike[str] | None" = None, model_config: "str | None" = None, **kwargs: object) -> UpstreamExpert:
    """USAD from our .safetensors, a release snapshot directory or a hub id (see the expert).

    `refresh` and other s3prl hub options are accepted and ignored; a hub id is looked up in the
    Hugging Face cache first. Options: target_layer, trust_remote_code (S3PRLUpstream extra_conf).
    """
    kwargs.pop("refresh", None)
    if not ckpt:
        raise UsadUpstreamError(
            "the usad upstream needs a checkpoint: pass -k/--upstream_ckpt PATH to run_downstream.py or "
            f"path_or_url=PATH to S3PRLUpstream; {HOW_TO_GET}"
        )
    return UpstreamExpert(str(ckpt), model_config=model_config, **kwargs)


def usad_local(ckpt: "str | os.PathLike[str] | None" = None, model_config: "str | None" = None, **kwargs: object) -> UpstreamExpert:
    """Alias of `usad`, following s3prl's `<name>_local` convention for local checkpoints."""
    return usad(ckpt, model_config, **kwargs)


ENTRIES: dict[str, Callable[..., UpstreamBase]] = {"usad": usad, "usad_local": usad_local}
# Any teacher spec file (one teacher, several concatenated, or fbank): `-u usad_teacher -k SPEC.yaml`.
ENTRIES["usad_teacher"] = usad_teacher


def register_s3prl_upstreams() -> list[str]:
    """Add the USAD entries to s3prl.hub (idempotent); returns the registered names."""
    import s3prl.hub as hub

    for name, entry in ENTRIES.items():
        setattr(hub, name, entry)
    return sorted(ENTRIES)


def check_upstream_name(name: str) -> None:
    """Refuse a name s3prl.hub does not have (e.g. the typo `usadd`) in one line naming the
    closest names, before s3prl's runner fails on it with a traceback."""
    if name in ENTRIES:
        return
    # s3prl.hub warns "ESPnet is not installed" on import, which is no news when checking a name.
    logging.getLogger("s3prl.upstream.espnet_hubert.expert").setLevel(logging.ERROR)
    register_s3prl_upstreams()
    import s3prl.hub as hub

    names = hub.options()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close else
                "list them with `python -c 'import s3prl.hub; print(s3prl.hub.options())'`")
        raise UsadUpstreamError(f"unknown s3prl upstream {name!r} ({len(names)} names in s3prl.hub); {hint}")
