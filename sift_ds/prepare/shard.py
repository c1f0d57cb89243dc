"""One shard of a preparation: its documents (a range of whole packing batches) -> token ids ->
blocks, packed batch by batch by the training job's own packing functions, so that the shards, in
order, hold exactly the blocks the job packs in process. Columns are written atomically, then the
shard's record (``shard-NNNNN.json``): a shard with a record is finished.

Stored columns: ``input_ids`` (the token dtype) for ``mlm`` and ``clm``, whose other columns follow
from it; for ``mlm+nsp`` also ``token_type_ids``, ``attention_mask``, ``special_tokens_mask`` and
``next_sentence_label`` (uint8).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from ..pretrain.data import PACK_BATCH, clm_blocks, mlm_blocks, nsp_blocks
from ..shards.layout import atomic_json, atomic_npy, column_file, read_json, shard_name

NSP_COLUMNS = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "next_sentence_label")


@dataclass(frozen=True)
class Packing:
    objective: str
    seq_len: int
    cls: Optional[int]
    sep: Optional[int]
    pad: Optional[int]
    eos: Optional[int]
    seed: int  # the NSP pairs' (--data_seed)
    dtype: str  # of the token ids

    @property
    def columns(self):
        return NSP_COLUMNS if self.objective == "mlm+nsp" else ("input_ids",)

    def pack(self, docs: List[np.ndarray], first_row: int) -> Dict[str, Any]:
        """The blocks of one packing batch whose first document is row ``first_row`` of the corpus."""
        if self.objective == "mlm":
            return mlm_blocks(docs, self.seq_len, self.cls, self.sep)
        if self.objective == "clm":
            return clm_blocks(docs, self.seq_len, self.eos)
        return nsp_blocks(docs, first_row, self.seq_len, self.seed, self.cls, self.sep, self.pad)

    def column_dtype(self, column: str) -> np.dtype:
        return np.dtype(self.dtype) if column == "input_ids" else np.dtype(np.uint8)


def finished_record(out: str, index: int) -> Optional[Dict[str, Any]]:
    """The record of a finished shard whose files all have their recorded sizes, else None."""
    try:
        record = read_json(os.path.join(out, shard_name(index) + ".json"), "shard record")
    except ValueError:
        return None
    if not record or not isinstance(record.get("files"), dict):
        return None
    for name, meta in record["files"].items():
        path = os.path.join(out, name)
        if not os.path.isfile(path) or os.path.getsize(path) != meta.get("size"):
            return None
    return record


def write_shard(out: str, index: int, start: int, stop: int, source, tokenizer, packing: Packing) -> Dict[str, Any]:
    """Tokenize and pack documents ``[start, stop)`` of ``source`` into shard ``index`` of ``out``."""
    parts: Dict[str, List[np.ndarray]] = {c: [] for c in packing.columns}
    tokens = skipped = 0
    for first in range(start, stop, PACK_BATCH):
        docs, too_long = source.documents(first, min(stop, first + PACK_BATCH), tokenizer)
        skipped += too_long
        tokens += sum(len(d) for d in docs)
        blocks = packing.pack(docs, first)
        for column in packing.columns:
            values = np.asarray(blocks[column], dtype=np.int64)
            if column != "next_sentence_label":
                values = values.reshape(-1, packing.seq_len)
            parts[column].append(values)
    name = shard_name(index)
    files = {}
    for column, chunks in parts.items():
        array = np.concatenate(chunks).astype(packing.column_dtype(column))
        files[column_file(name, column)] = atomic_npy(os.path.join(out, column_file(name, column)), array)
    rows = sum(len(c) for c in parts["input_ids"])
    record = {"shard": index, "first_document": start, "documents": stop - start, "tokens": int(tokens),
              "blocks": int(rows), "skipped_long_documents": skipped, "files": files}
    atomic_json(os.path.join(out, name + ".json"), record)
    return record
