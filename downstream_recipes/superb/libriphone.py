"""The `libriphone` corpus of s3prl's ctc expert (SUPERB PR), which the s3prl 0.4.18 wheel lacks
(registered by ctc_corpus.install()).

Data: `<csv_dir>/<split>.csv` with columns `wav_path` and `transcription` (upper-case words);
lexicon files hold `WORD PH1 PH2 ...` lines whose phones are in the vocabulary file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .ctc_corpus import BucketedDataset


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


class LibriPhoneDataset(BucketedDataset):
    """Utterances with phone-token targets."""

    def __init__(self, split_csv: str, tokenizer: Any, bucket_size: int, lexicon: "list[str]", csv_dir: str,
                 ascending: bool = False, **kwargs: Any) -> None:
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
        super().__init__(items, bucket_size, ascending)
