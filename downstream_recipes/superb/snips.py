"""The `snips` corpus of s3prl's ctc expert (SUPERB SF), which the s3prl 0.4.18 wheel lacks
(registered by ctc_corpus.install()). The Audio SNIPS layout is read by s3prl's own
`s3prl.dataio.corpus.snips.SNIPS`; this class only turns its utterances into the ctc loader's
(wav path, token ids) items for one split and its SUPERB speaker list.

Config keys (the ctc expert passes its whole `corpus` block): `path` (the SNIPS folder),
`train`/`dev`/`test` (split folders, e.g. ['valid']), `train_speakers`, `valid_speakers`,
`test_speakers`.
"""
from __future__ import annotations

from typing import Any

from .ctc_corpus import BucketedDataset


class SnipsDataset(BucketedDataset):
    def __init__(self, split: "list[str] | str", tokenizer: Any, bucket_size: int, path: str, ascending: bool = False,
                 **kwargs: Any) -> None:
        from s3prl.dataio.corpus.snips import SNIPS

        folders = [split] if isinstance(split, str) else list(split)
        missing = [k for k in ("train_speakers", "valid_speakers", "test_speakers") if k not in kwargs]
        if missing:
            raise ValueError(f"SF corpus config lacks {missing} (SUPERB's speaker lists, configs/sf.yaml)")
        corpus = SNIPS(path, kwargs["train_speakers"], kwargs["valid_speakers"], kwargs["test_speakers"])
        by_folder = {"train": corpus.train, "valid": corpus.valid, "test": corpus.test}
        unknown = [f for f in folders if f not in by_folder]
        if unknown:
            raise ValueError(f"SF split folders {unknown}: Audio SNIPS has train, valid and test")
        slots = "-slot" in tokenizer.token_type
        items = []
        for folder in folders:
            for utt in by_folder[folder].values():
                # the character-slot encoder reads the all.iob.snips.txt line: BOS words EOS<TAB>O tags intent
                text = f"BOS {utt['transcription']} EOS\tO {utt['iob']} {utt['intent']}" if slots else utt["transcription"]
                items.append((utt["wav_path"], tokenizer.encode(text)))
        super().__init__(items, bucket_size, ascending)
