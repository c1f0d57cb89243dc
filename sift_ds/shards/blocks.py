"""Reading a prepared directory: its manifest, checked against the run (one line naming both values
on a mismatch), and its blocks as ``PreparedBlocks``, memory maps of the shards' columns.

``PreparedBlocks`` offers what the training job uses of a ``datasets.Dataset`` of blocks (``len``,
``select``, ``with_format("numpy")``, rows by index, a column by name, ``iter``, ``add_column``) and
gives the same rows as the job's in-process blocks: int64 columns, with those not stored
(``token_type_ids``, ``attention_mask``, ``special_tokens_mask`` of ``mlm``; ``attention_mask`` of
``clm``) made from ``input_ids`` as packing makes them. Opening one reads the manifest and a few
bytes of each file: its cost does not grow with the corpus. ``PreparedRows``: rows as a torch
``Dataset`` of lists, for transformers' Trainer.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .layout import FORMAT, MANIFEST, read_json

COLUMNS = {"mlm": ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask"),
           "clm": ("input_ids", "attention_mask"),
           "mlm+nsp": ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "next_sentence_label")}


def read_manifest(path: str, flag: str = "--prepared") -> Dict[str, Any]:
    """The manifest of a finished preparation, each of its files present with its recorded size."""
    manifest = read_json(os.path.join(path, MANIFEST), f"{flag} {path}:")
    if manifest is None:
        raise ValueError(f"{flag} {path}: no {MANIFEST}: not a prepared directory, or its preparation did not finish "
                         "(run launch/prepare_data.py again with the same arguments: it resumes)")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{flag} {path}: format {manifest.get('format')!r}, this sift_ds reads {FORMAT!r}")
    for shard in manifest["shards"]:
        for name, meta in shard["files"].items():
            file = os.path.join(path, name)
            size = os.path.getsize(file) if os.path.isfile(file) else None
            if size != meta["size"]:
                raise ValueError(f"{flag} {path}: {name} is {'missing' if size is None else f'{size} bytes'}, the "
                                 f"manifest says {meta['size']} bytes: prepare it again")
    return manifest


def check_manifest(manifest: Dict[str, Any], path: str, seq_len: int, objective: str, tokenizer_sha256: str,
                   tokenizer_name: str, data_seed: Optional[int] = None, seq_flag: str = "--seq_len") -> None:
    """ValueError (one line naming both values) when the blocks were prepared for another run."""
    def refuse(what: str, prepared, run, hint: str) -> None:
        raise ValueError(f"--prepared {path} was prepared with {what} {prepared}, this run has {run}: {hint}")

    if manifest["objective"] != objective:
        refuse("--objective", manifest["objective"], objective, "prepare it with this run's objective")
    if manifest["seq_len"] != seq_len:
        refuse(seq_flag, manifest["seq_len"], seq_len, f"prepare it with --seq_len {seq_len} (or train with "
                                                       f"{seq_flag} {manifest['seq_len']})")
    if manifest["tokenizer_sha256"] != tokenizer_sha256:
        refuse("the tokenizer", f"sha256 {manifest['tokenizer_sha256'][:12]} ({manifest.get('tokenizer_source')})",
               f"{tokenizer_name} (sha256 {tokenizer_sha256[:12]})", "train with the tokenizer it holds "
                                                                      f"({os.path.join(path, 'tokenizer')})")
    if objective == "mlm+nsp" and data_seed is not None and manifest["data_seed"] != data_seed:
        refuse("--data_seed", manifest["data_seed"], data_seed, "its NSP pairs are drawn with that seed")


class PreparedBlocks:
    """Rows ``rows`` (all when None) of a prepared directory's blocks (see the module docstring)."""

    def __init__(self, path: str, manifest: Dict[str, Any], rows: Optional[np.ndarray] = None,
                 extra: Optional[Dict[str, np.ndarray]] = None, shards: Optional[List[Dict[str, np.ndarray]]] = None):
        self.path, self.manifest = path, manifest
        self.objective = manifest["objective"]
        self.cls, self.sep = manifest["special_ids"][:2]
        self.shards = shards if shards is not None else [
            {column: np.load(os.path.join(path, name), mmap_mode="r")
             for name, column in ((n, n.split(".")[1]) for n in shard["files"])} for shard in manifest["shards"]]
        self.offsets = np.cumsum([0] + [len(s["input_ids"]) for s in self.shards])
        self.rows = rows
        self.extra = extra or {}

    @property
    def column_names(self) -> List[str]:
        return list(COLUMNS[self.objective]) + list(self.extra)

    def __len__(self) -> int:
        return int(self.offsets[-1]) if self.rows is None else len(self.rows)

    def _view(self, rows: Optional[np.ndarray], extra: Dict[str, np.ndarray]) -> "PreparedBlocks":
        return PreparedBlocks(self.path, self.manifest, rows, extra, self.shards)

    def select(self, indices) -> "PreparedBlocks":
        indices = np.asarray(indices, dtype=np.int64)
        rows = indices if self.rows is None else self.rows[indices]
        return self._view(rows, {k: v[indices] for k, v in self.extra.items()})

    def with_format(self, type: Optional[str] = None, **_) -> "PreparedBlocks":  # noqa: A002 - datasets' name
        if type not in (None, "numpy"):
            raise ValueError(f"prepared blocks are read as numpy arrays, not {type!r}")
        return self

    def add_column(self, name: str, values) -> "PreparedBlocks":
        return self._view(self.rows, {**self.extra, name: np.asarray(values)})

    def _stored(self, rows: np.ndarray) -> Dict[str, np.ndarray]:
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        out: Dict[str, np.ndarray] = {}
        for column, first in self.shards[0].items():
            out[column] = np.empty((len(rows),) + first.shape[1:], dtype=np.int64)
        for s in np.unique(shard_of):
            where = shard_of == s
            local = rows[where] - self.offsets[s]
            for column, array in self.shards[s].items():
                out[column][where] = array[local]
        return out

    def take(self, positions: np.ndarray) -> Dict[str, np.ndarray]:
        """Rows at ``positions`` of this view, one int64 array per column."""
        rows = positions if self.rows is None else self.rows[positions]
        columns = self._stored(np.asarray(rows, dtype=np.int64))
        ids = columns["input_ids"]
        if self.objective != "mlm+nsp":
            ones = np.ones_like(ids)
            if self.objective == "mlm":
                columns["token_type_ids"] = np.zeros_like(ids)
            columns["attention_mask"] = ones
            if self.objective == "mlm":
                columns["special_tokens_mask"] = ((ids == self.cls) | (ids == self.sep)).astype(np.int64)
        out = {c: columns[c] for c in COLUMNS[self.objective]}
        out.update({k: v[positions] for k, v in self.extra.items()})
        return out

    def __getitem__(self, key):
        if isinstance(key, str):
            return np.concatenate([b[key] for b in self.iter(1 << 14)]) if len(self) else np.zeros(0, np.int64)
        if isinstance(key, (int, np.integer)):
            return {k: v[0] for k, v in self.take(np.array([int(key) % len(self)])).items()}
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        return self.take(np.asarray(key, dtype=np.int64).reshape(-1))

    def iter(self, batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield self.take(np.arange(start, min(len(self), start + batch_size)))


def open_prepared(path: str, flag: str = "--prepared") -> Tuple[Dict[str, Any], PreparedBlocks]:
    manifest = read_manifest(path, flag)
    return manifest, PreparedBlocks(path, manifest)


class PreparedRows(torch.utils.data.Dataset):
    """Prepared blocks as a torch ``Dataset`` of rows (dicts of lists), as transformers' Trainer reads one."""

    def __init__(self, blocks: PreparedBlocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> Dict[str, List[int]]:
        return {k: v.tolist() for k, v in self.blocks[int(index)].items()}

    def select(self, indices) -> "PreparedRows":
        return PreparedRows(self.blocks.select(list(indices)))
