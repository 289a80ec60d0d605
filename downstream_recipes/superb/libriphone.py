"""The `libriphone` corpus of s3prl's ctc expert (SUPERB PR), which the s3prl 0.4.18 wheel lacks.

s3prl's `ctc/data.py` imports `.corpus.libriphone.LibriPhoneDataset`, but the wheel ships no
`ctc/corpus/` package, so `-d ctc` with the PR config fails at import. `install()` registers this
module under that name (only when the real one is absent). Interface, as the ctc loader expects:
`Dataset(split_csv, tokenizer, bucket_size, lexicon=[files], csv_dir=dir, ...)`, items are
(wav path, token ids), or a list of `bucket_size` such pairs of similar length when bucketing.

Data: `<csv_dir>/<split>.csv` with columns `wav_path` and `transcription` (upper-case words);
lexicon files hold `WORD PH1 PH2 ...` lines whose phones are in the vocabulary file.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pandas as pd
from torch.utils.data import Dataset

MODULE = "s3prl.downstream.ctc.corpus"


def read_lexicon(files: "list[str] | str", known_phones: "set[str]") -> dict[str, list[str]]:
    """WORD -> phones; the first pronunciation of a word wins, as in SUPERB's setup."""
    if isinstance(files, (str, Path)):
        files = [str(files)]
    lexicon: dict[str, list[str]] = {}
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"PR lexicon file not found: {path}")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            word, *phones = line.split()
            if not phones:
                raise ValueError(f"{path}:{n}: expected 'WORD PHONE ...', got {line!r}")
            unknown = [p for p in phones if p not in known_phones]
            if unknown:
                raise ValueError(f"{path}:{n}: phones {unknown} are not in the vocabulary file")
            lexicon.setdefault(word, phones)
    return lexicon


class LibriPhoneDataset(Dataset):
    """Utterances with phone-token targets, longest first so buckets hold similar lengths."""

    def __init__(self, split_csv: str, tokenizer: Any, bucket_size: int, lexicon: "list[str]", csv_dir: str,
                 ascending: bool = False, **kwargs: Any) -> None:
        self.bucket_size = bucket_size
        words = read_lexicon(lexicon, set(tokenizer._vocab2idx))
        path = Path(csv_dir) / split_csv
        if not path.is_file():
            raise ValueError(f"PR split file not found: {path}")
        table = pd.read_csv(path)
        missing = {"wav_path", "transcription"} - set(table.columns)
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)} (need wav_path, transcription)")
        items = []
        for wav, text in zip(table["wav_path"], table["transcription"]):
            phones = []
            for word in str(text).split():
                if word not in words:
                    raise ValueError(f"{path}: word {word!r} of {wav} is not in the lexicon")
                phones += words[word]
            items.append((str(wav), tokenizer.encode(" ".join(phones))))
        if not items:
            raise ValueError(f"{path}: no utterances")
        items.sort(key=lambda item: len(item[1]), reverse=not ascending)
        self.items = items

    def __getitem__(self, index: int) -> Any:
        if self.bucket_size > 1:
            start = max(0, min(len(self.items) - self.bucket_size, index))
            return self.items[start : start + self.bucket_size]
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)


def install() -> bool:
    """Register this module as `s3prl.downstream.ctc.corpus.libriphone` if s3prl lacks it."""
    if MODULE in sys.modules or importlib.util.find_spec("s3prl") is None:
        return False
    import s3prl.downstream.ctc as ctc

    if (Path(ctc.__file__).parent / "corpus").is_dir():
        return False
    package = types.ModuleType(MODULE)
    package.__path__ = []  # a namespace the import system will not search on disk
    package.libriphone = sys.modules[__name__]  # type: ignore[attr-defined]
    sys.modules[MODULE] = package
    sys.modules[f"{MODULE}.libriphone"] = sys.modules[__name__]
    return True
