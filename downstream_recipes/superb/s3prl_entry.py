"""The process the SUPERB recipe launches: the project's run_downstream drop-in, plus the fixes
only the SUPERB experts need (the shared compat layer covers what every s3prl use needs).

- `catalyst` (undeclared s3prl dependency of the speech_commands expert, for one class): when it
  is not installed, `catalyst.data.sampler.DistributedSamplerWrapper` is provided here;
- the `libriphone` (PR) and `snips` (SF) corpora of the ctc expert, missing from the s3prl wheel
  (see ctc_corpus.py);
- s3prl's voxceleb1 (SID) and sv_voxceleb1 (ASV) loaders cache file lists / trimmed lengths in
  the *package* directory under names that depend only on the split, so a second corpus would
  silently reuse the first one's lists; with USAD_S3PRL_CACHE set, both caches live in that
  (per-run) directory instead.

Arguments are run_downstream's, unchanged.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Iterator

from torch.utils.data import DistributedSampler, Sampler

CACHE_ENV = "USAD_S3PRL_CACHE"


class DistributedSamplerWrapper(DistributedSampler):
    """Shard the indices another sampler draws (e.g. a WeightedRandomSampler) over DDP ranks.

    Same contract as catalyst's class of that name: each epoch the wrapped sampler is drawn
    once, and every rank takes its own disjoint share of those draws.
    """

    def __init__(self, sampler: Sampler, num_replicas: "int | None" = None, rank: "int | None" = None,
                 shuffle: bool = True) -> None:
        super().__init__(range(len(sampler)), num_replicas=num_replicas, rank=rank, shuffle=shuffle)  # type: ignore[arg-type]
        self.sampler = sampler

    def __iter__(self) -> Iterator[int]:
        draws = list(iter(self.sampler))
        return iter([draws[i] for i in super().__iter__()])


def provide_catalyst_sampler() -> bool:
    """Register `catalyst.data.sampler.DistributedSamplerWrapper` when catalyst is absent."""
    if importlib.util.find_spec("catalyst") is not None:
        return False
    names = ("catalyst", "catalyst.data", "catalyst.data.sampler")
    modules = {name: types.ModuleType(name) for name in names}
    for name, module in modules.items():
        module.__path__ = []  # type: ignore[attr-defined]
        sys.modules[name] = module
    modules["catalyst"].data = modules["catalyst.data"]  # type: ignore[attr-defined]
    modules["catalyst.data"].sampler = modules["catalyst.data.sampler"]  # type: ignore[attr-defined]
    modules["catalyst.data.sampler"].DistributedSamplerWrapper = DistributedSamplerWrapper  # type: ignore[attr-defined]
    return True


def redirect_caches(cache: str) -> None:
    """Point s3prl's SID and ASV dataset caches at `cache` (see the module docstring)."""
    import s3prl.downstream.sv_voxceleb1.dataset as asv_dataset
    import s3prl.downstream.voxceleb1.dataset as sid_dataset

    sid_dataset.CACHE_PATH = os.path.join(cache, "")
    # sv_voxceleb1 derives its cache folder from the module's __file__: <dir of __file__>/.wav_lengths
    os.makedirs(os.path.join(cache, "sv_voxceleb1"), exist_ok=True)
    asv_dataset.__file__ = os.path.join(cache, "sv_voxceleb1", "dataset.py")


def main() -> None:
    from usad_upstream.compat import patch_s3prl

    patch_s3prl()
    provide_catalyst_sampler()
    from . import ctc_corpus

    ctc_corpus.install()
    cache = os.environ.get(CACHE_ENV)
    if cache:
        redirect_caches(cache)
    from downstream_recipes.run_downstream import main as run_downstream_main

    run_downstream_main()


if __name__ == "__main__":
    main()
