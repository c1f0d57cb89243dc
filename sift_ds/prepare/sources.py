"""Where a preparation's documents come from, as token ids per document, a range at a time (what one
shard reads):

  * ``TextSource``: the corpus of the training job (``sift_ds.pretrain.corpus.load_corpus``: text and
    JSON-lines files, a ``datasets`` directory or hub name), tokenized as the job tokenizes it
    (``sift_ds.pretrain.data.tokenize_document``); a document longer than ``max_chars`` characters is
    skipped and counted;
  * ``MegatronSource``: Megatron indexed datasets (``preprocess_data.py``'s ``.bin``/``.idx``), read
    with megatron-core's ``IndexedDataset``; a document is the concatenation of its sequences (its
    sentences with ``--split-sentences``), without a trailing end-of-document token (``--append-eod``),
    since packing puts its own separator there.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from ..pretrain.data import tokenize_document

Documents = Tuple[List[np.ndarray], int]  # (token ids per document, documents skipped as too long)


@dataclass
class TextSource:
    corpus: object  # a datasets.Dataset with a "text" column
    max_chars: int = 0  # 0: no limit

    def __len__(self) -> int:
        return len(self.corpus)

    def documents(self, start: int, stop: int, tokenizer) -> Documents:
        docs, skipped = [], 0
        for text in self.corpus[start:stop]["text"]:
            if self.max_chars and len(text) > self.max_chars:
                docs.append(np.zeros(0, dtype=np.int32))
                skipped += 1
            else:
                docs.append(tokenize_document(tokenizer, text))
        return docs, skipped


def megatron_prefix(prefix: str) -> str:
    """A ``--megatron_prefix``: the path without ``.bin``/``.idx``, whose two files must exist."""
    base = prefix[:-4] if prefix.endswith((".bin", ".idx")) else prefix
    missing = [base + ext for ext in (".bin", ".idx") if not os.path.isfile(base + ext)]
    if missing:
        raise ValueError(f"--megatron_prefix {prefix}: no {' or '.join(missing)} (a Megatron indexed dataset is "
                         "PREFIX.bin and PREFIX.idx)")
    return base


class MegatronSource:
    """The documents of one or more Megatron indexed datasets, in order."""

    def __init__(self, prefixes: Sequence[str], end_token: int, vocab_size: int):
        with warnings.catch_warnings():  # megatron-core's import warns of every optional package it lacks
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDataset  # optional: megatron-core
        logging.getLogger("megatron.core.datasets.indexed_dataset").setLevel(logging.WARNING)

        self.prefixes = [megatron_prefix(p) for p in prefixes]
        self.end_token, self.vocab_size = end_token, vocab_size
        self.datasets = []
        for prefix in self.prefixes:
            try:
                self.datasets.append(IndexedDataset(prefix, mmap=True))
            except (AssertionError, ValueError, OSError, IndexError) as err:
                raise ValueError(f"--megatron_prefix {prefix}: not a Megatron indexed dataset megatron-core can "
                                 f"read ({type(err).__name__}: {err})") from None
        counts = [len(ds.document_indices) - 1 for ds in self.datasets]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def files(self) -> List[str]:
        return [prefix + ext for prefix in self.prefixes for ext in (".bin", ".idx")]

    def documents(self, start: int, stop: int, tokenizer=None) -> Documents:
        docs = []
        for doc in range(start, stop):
            which = int(np.searchsorted(self.starts, doc, side="right")) - 1
            ds, local = self.datasets[which], doc - int(self.starts[which])
            first, last = int(ds.document_indices[local]), int(ds.document_indices[local + 1])
            parts = ds[first:last] if last > first else []
            ids = np.concatenate(parts).astype(np.int64) if len(parts) else np.zeros(0, dtype=np.int64)
            if len(ids) and ids.max() >= self.vocab_size:
                raise ValueError(f"--megatron_prefix {self.prefixes[which]}: document {local} holds token id "
                                 f"{int(ids.max())}, beyond the tokenizer's {self.vocab_size} tokens: give the "
                                 "--tokenizer the dataset was made with")
            if len(ids) and ids[-1] == self.end_token:
                ids = ids[:-1]
            docs.append(ids)
        return docs, 0
