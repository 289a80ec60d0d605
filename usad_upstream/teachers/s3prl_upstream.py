"""Any s3prl upstream (by hub name, optionally with a checkpoint) as a teacher of hidden states.

Layers: s3prl's `hidden_states` usually start with the input embedding (e.g. the CNN output of
wav2vec 2.0 / HuBERT / WavLM) before the transformer layers. That entry is dropped by default,
so layer k is the k-th transformer layer as in the paper's numbering; `include_input_layer=True`
keeps it. An upstream with a single hidden state (fbank, mfcc, ...) keeps it either way.

Padding: many upstreams pad a batch without masking, so by default each item runs alone
(exact); `batched=True` runs the batch through s3prl at once (faster, may leak padding).
"""
from __future__ import annotations

import torch

from .. import compat
from ..frontend import check_waveforms
from .base import Teacher, TeacherOutput, frame_mask

SAMPLE_RATE = 16000


def build_s3prl_upstream(name: str, ckpt: "str | None" = None, extra_conf: "dict | None" = None) -> torch.nn.Module:
    """s3prl's own `S3PRLUpstream` wrapper (lengths, downsample rates) for a hub entry."""
    compat.patch_s3prl()
    from s3prl import hub
    from s3prl.nn.upstream import S3PRLUpstream

    if not name or not hasattr(hub, name):
        raise ValueError(f"unknown s3prl upstream {name!r}; list the names with `python -c \"import s3prl.hub as h; print(h.options())\"`")
    if ckpt is None and name.endswith(("_local", "_url", "_custom")):
        raise ValueError(f"s3prl upstream {name!r} needs a checkpoint: give 'ckpt' (a path or URL)")
    return S3PRLUpstream(name, path_or_url=ckpt, extra_conf=extra_conf)


class S3PRLTeacher(Teacher):
    """Hidden states of an s3prl upstream; frame rate from its downsample rate."""

    def __init__(self, upstream: torch.nn.Module, include_input_layer: bool = False, batched: bool = False) -> None:
        super().__init__()
        self.upstream = upstream
        rates, sizes = set(upstream.downsample_rates), set(upstream.hidden_sizes)
        if len(rates) != 1 or len(sizes) != 1:
            raise ValueError(
                f"s3prl upstream layers differ in downsample rate {sorted(rates)} or width {sorted(sizes)}; "
                "a teacher needs one frame rate and one width"
            )
        self.skip = 1 if upstream.num_layers > 1 and not include_input_layer else 0
        self.batched = batched
        self.frame_rate = SAMPLE_RATE / rates.pop()
        self.num_layers = upstream.num_layers - self.skip
        self.dim = sizes.pop()
        self.freeze()

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> TeacherOutput:
        lens = check_waveforms(wavs, wav_lens)
        if self.batched:
            hs, hs_lens = self.upstream(wavs, lens)
            layers, lengths = list(hs[self.skip :]), hs_lens[0]
        else:
            runs = [self.upstream(wavs[i : i + 1, :n], lens[i : i + 1]) for i, n in enumerate(lens.tolist())]
            lengths = torch.cat([hs_lens[0] for _, hs_lens in runs])
            layers = []
            for k in range(self.skip, self.skip + self.num_layers):
                out = runs[0][0][k].new_zeros(len(runs), int(lengths.max()), self.dim)
                for i, (hs, _) in enumerate(runs):
                    out[i, : int(lengths[i])] = hs[k][0, : int(lengths[i])]
                layers.append(out)
        valid = frame_mask(lengths, layers[0].shape[1])[..., None]
        return TeacherOutput(
            layers=[h.masked_fill(~valid, 0.0) for h in layers], lengths=lengths, frame_rate=self.frame_rate
        )
