"""The corpus modules s3prl's ctc expert imports and the s3prl 0.4.18 wheel lacks.

`ctc/data.py` imports `.corpus.libriphone.LibriPhoneDataset` (SUPERB PR) and
`.corpus.snips.SnipsDataset` (SUPERB SF), but the wheel ships no `ctc/corpus/` package, so
`-d ctc` fails at import. `install()` registers ours under those names (only when the real
package is absent). Both follow the interface the ctc loader expects:
`Dataset(split, tokenizer, bucket_size, **corpus_config)`; items are (wav path, token ids), or,
when bucketing, a list of `bucket_size` such pairs of similar length.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

PACKAGE = "s3prl.downstream.ctc.corpus"


class BucketedDataset(Dataset):
    """(wav path, token ids) items, longest token sequence first, so a bucket (a run of
    consecutive items) holds utterances of similar length."""

    def __init__(self, items: "list[tuple[str, list[int]]]", bucket_size: int, ascending: bool = False) -> None:
        self.bucket_size = bucket_size
        self.items = sorted(items, key=lambda item: len(item[1]), reverse=not ascending)

    def __getitem__(self, index: int) -> Any:
        if self.bucket_size > 1:
            start = max(0, min(len(self.items) - self.bucket_size, index))
            return self.items[start : start + self.bucket_size]
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)


def install() -> bool:
    """Register `s3prl.downstream.ctc.corpus.{libriphone,snips}` if s3prl lacks them."""
    if PACKAGE in sys.modules or importlib.util.find_spec("s3prl") is None:
        return False
    import s3prl.downstream.ctc as ctc

    if (Path(ctc.__file__).parent / "corpus").is_dir():
        return False
    from . import libriphone, snips

    package = types.ModuleType(PACKAGE)
    package.__path__ = []  # a namespace the import system will not search on disk
    sys.modules[PACKAGE] = package
    for name, module in (("libriphone", libriphone), ("snips", snips)):
        setattr(package, name, module)
        sys.modules[f"{PACKAGE}.{name}"] = module
    return True
