"""Pretraining data: the corpus's documents -> tokens (``datasets.map``, cached) -> fixed-length blocks
-> train / validation split.

Blocks (``pack_mlm`` / ``pack_nsp``) are full ``seq_len`` rows with ``input_ids``, ``token_type_ids``,
``attention_mask`` and ``special_tokens_mask`` (plus ``next_sentence_label`` for MLM+NSP); the
masking happens later, per batch (``sift_ds.pretrain.loader``). Causal-LM blocks (``pack_clm``) are
``input_ids`` and ``attention_mask`` only: documents with an EOS after each, cut into full rows.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import datasets
import numpy as np
from datasets.fingerprint import Hasher

from .tokenizer import bounded_pieces, to_json

OBJECTIVES = ("mlm", "mlm+nsp", "clm")
MASKED_OBJECTIVES = ("mlm", "mlm+nsp")
MIN_SEQ_LEN = 8
PACK_BATCH = 1000  # documents per packing batch (``datasets.map``'s default); each batch's remainder is dropped


def cached_map(ds, function, name: str, key, cache_dir: Optional[str] = None, **kwargs):
    """``ds.map(function, batched=True)`` with a cache keyed by ``(ds fingerprint, name, key)``.

    File-backed datasets cache next to their arrow files (``datasets``' own cache); in-memory ones
    (the default corpus) in ``cache_dir`` (default: the ``datasets`` cache). An explicit fingerprint
    avoids hashing the closure, whose tokenizer hash is not stable across calls.
    """
    fingerprint = Hasher.hash([ds._fingerprint, name, key])
    if not ds.cache_files:
        folder = os.path.join(cache_dir or str(datasets.config.HF_DATASETS_CACHE), "sift_ds")
        os.makedirs(folder, exist_ok=True)
        kwargs["cache_file_name"] = os.path.join(folder, f"{name}-{fingerprint}.arrow")
    return ds.map(function, batched=True, new_fingerprint=fingerprint, load_from_cache_file=True, desc=name, **kwargs)


def tokenize_corpus(corpus, tokenizer, cache_dir: Optional[str] = None):
    """``input_ids`` per document, without special tokens (packing adds them)."""
    def tokenize(batch):
        ids = [tokenize_document(tokenizer, text) for text in batch["text"]]
        return {"input_ids": ids, "num_tokens": [len(x) for x in ids]}

    # Long documents exceed model_max_length; packing cuts them, so the length warning is noise.
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    return cached_map(corpus, tokenize, "tokenize", to_json(tokenizer), cache_dir,
                      remove_columns=corpus.column_names)


def tokenize_document(tokenizer, text: str, pieces_per_call: int = 16) -> np.ndarray:
    """One document's token ids (int32, no special tokens), tokenized in ``bounded_pieces`` a few
    at a time, so that memory stays bounded however long the document (one line of 30 MB, say)."""
    pieces = bounded_pieces(text)
    parts = []
    for start in range(0, len(pieces), pieces_per_call):
        ids = tokenizer(pieces[start : start + pieces_per_call], add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)["input_ids"]
        parts.extend(np.asarray(x, dtype=np.int32) for x in ids)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _special_ids(tokenizer) -> Tuple[int, int, int]:
    return tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id


def pack_mlm(tokenized, tokenizer, seq_len: int, cache_dir: Optional[str] = None):
    """``[CLS] tokens [SEP]`` blocks of exactly ``seq_len`` cut from the concatenated documents,
    with ``[SEP]`` between documents (``run_mlm.py``'s ``group_texts``: the remainder of each map
    batch of ``PACK_BATCH`` documents is dropped)."""
    cls, sep, _ = _special_ids(tokenizer)
    return cached_map(tokenized, lambda batch: mlm_blocks(batch["input_ids"], seq_len, cls, sep), "pack_mlm",
                      (seq_len, cls, sep), cache_dir, batch_size=PACK_BATCH, remove_columns=tokenized.column_names)


def mlm_blocks(documents, seq_len: int, cls: int, sep: int) -> dict:
    """The MLM blocks of one batch of tokenized documents (see ``pack_mlm``)."""
    body = seq_len - 2
    docs = [np.asarray(d, dtype=np.int64) for d in documents if len(d)]
    if not docs:
        return _empty_blocks()
    stream = np.concatenate([np.append(d, sep) for d in docs])
    rows = len(stream) // body
    blocks = np.empty((rows, seq_len), dtype=np.int64)
    blocks[:, 0], blocks[:, -1] = cls, sep
    blocks[:, 1:-1] = stream[: rows * body].reshape(rows, body)
    special = (blocks == cls) | (blocks == sep)
    return {
        "input_ids": blocks,
        "token_type_ids": np.zeros_like(blocks),
        "attention_mask": np.ones_like(blocks),
        "special_tokens_mask": special.astype(np.int64),
    }


def pack_clm(tokenized, tokenizer, seq_len: int, cache_dir: Optional[str] = None):
    """Causal-LM blocks of exactly ``seq_len`` tokens cut from the concatenated documents, each
    document followed by the EOS token (GPT-2's packing; the remainder of each map batch is dropped).
    No padding: every position is a target."""
    eos = tokenizer.eos_token_id
    return cached_map(tokenized, lambda batch: clm_blocks(batch["input_ids"], seq_len, eos), "pack_clm",
                      (seq_len, eos), cache_dir, batch_size=PACK_BATCH, remove_columns=tokenized.column_names)


def clm_blocks(documents, seq_len: int, eos: int) -> dict:
    """The causal-LM blocks of one batch of tokenized documents (see ``pack_clm``)."""
    docs = [np.asarray(d, dtype=np.int64) for d in documents if len(d)]
    if not docs:
        return {"input_ids": [], "attention_mask": []}
    stream = np.concatenate([np.append(d, eos) for d in docs])
    rows = len(stream) // seq_len
    blocks = stream[: rows * seq_len].reshape(rows, seq_len)
    return {"input_ids": blocks, "attention_mask": np.ones_like(blocks)}


def _empty_blocks(nsp: bool = False) -> dict:
    keys = ["input_ids", "token_type_ids", "attention_mask", "special_tokens_mask"] + (["next_sentence_label"] if nsp else [])
    return {k: [] for k in keys}


def pack_nsp(tokenized, tokenizer, seq_len: int, seed: int, cache_dir: Optional[str] = None):
    """Sentence pairs ``[CLS] A [SEP] B [SEP]`` (padded to ``seq_len``) with next-sentence labels,
    a simple version of BERT's ``create_instances_from_document``: each document is walked in
    chunks of ``seq_len - 3`` tokens, cut at a random point into A and B; half of the time B is
    replaced by a random segment of another document of the same map batch (label 1, and the
    unused continuation goes back into the document) -- label 0 means B follows A. The cut is at
    token, not sentence, granularity. Random choices are seeded by (seed, first row of the batch).
    """
    cls, sep, pad = _special_ids(tokenizer)
    return cached_map(tokenized, lambda batch, indices: nsp_blocks(batch["input_ids"], indices[0], seq_len, seed,
                                                                   cls, sep, pad),
                      "pack_nsp", (seq_len, cls, sep, pad, seed), cache_dir, batch_size=PACK_BATCH,
                      with_indices=True, remove_columns=tokenized.column_names)


def nsp_blocks(documents, first_row: int, seq_len: int, seed: int, cls: int, sep: int, pad: int) -> dict:
    """The NSP pairs of one batch of tokenized documents whose first is row ``first_row`` of the
    corpus (see ``pack_nsp``)."""
    target = seq_len - 3
    rng = np.random.default_rng([seed, first_row])
    docs = [list(d) for d in documents if len(d) >= 2]
    out = _empty_blocks(nsp=True)
    for di, doc in enumerate(docs):
        pos = 0
        while len(doc) - pos >= 2:
            chunk = min(target, len(doc) - pos)
            a_len = int(rng.integers(1, chunk))
            a = doc[pos : pos + a_len]
            if rng.random() < 0.5:
                others = [j for j in range(len(docs)) if j != di] or [di]
                other = docs[others[int(rng.integers(len(others)))]]
                b_len = min(target - a_len, len(other))
                start = int(rng.integers(0, len(other) - b_len + 1))
                b, label, pos = other[start : start + b_len], 1, pos + a_len
            else:
                b, label, pos = doc[pos + a_len : pos + chunk], 0, pos + chunk
            _append_pair(out, a, b, label, cls, sep, pad, seq_len)
    return out


def _append_pair(out: dict, a: list, b: list, label: int, cls: int, sep: int, pad: int, seq_len: int) -> None:
    ids = [cls, *a, sep, *b, sep]
    fill = seq_len - len(ids)
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    special = [1] + [0] * len(a) + [1] + [0] * len(b) + [1]
    out["input_ids"].append(ids + [pad] * fill)
    out["token_type_ids"].append(types + [0] * fill)
    out["attention_mask"].append([1] * len(ids) + [0] * fill)
    out["special_tokens_mask"].append(special + [1] * fill)
    out["next_sentence_label"].append(label)


# ---------------------------------------------------------------------------------------- split
def split_blocks(blocks, val_fraction: float, max_val: int, seed: int = 0):
    """(train, val): a fixed random subset of ``round(val_fraction * n)`` blocks (at most
    ``max_val``, at least 1) is held out; the permutation depends only on ``seed`` and ``n``."""
    n = len(blocks)
    if n < 2:
        raise ValueError(f"empty corpus: it packs into {n} block(s); at least 2 are needed (train + validation)")
    n_val = min(max_val, max(1, int(round(val_fraction * n))), n - 1)
    held = np.sort(np.random.default_rng(seed).permutation(n)[:n_val])
    rest = np.ones(n, dtype=bool)
    rest[held] = False  # the complement in order without sorting n - n_val indices
    return blocks.select(np.flatnonzero(rest)), blocks.select(held)


def holdout_split(train, fraction: float, seed: int = 0):
    """(rest, holdout) of the training blocks: a fixed random ``fraction`` (a function of ``seed`` and
    the block count only) held out, e.g. to train a reference model on text the main run never sees."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--holdout_fraction must be in [0, 1), got {fraction}")
    n = len(train)
    n_holdout = min(n - 1, max(1, int(round(fraction * n))))
    perm = np.random.default_rng([seed, n]).permutation(n)
    return train.select(np.sort(perm[n_holdout:])), train.select(np.sort(perm[:n_holdout]))


@dataclass
class PretrainData:
    train: "object"  # datasets.Dataset of blocks
    val: "object"
    num_documents: int
    num_tokens: int


def build_pretrain_data(corpus, tokenizer, seq_len: int, objective: str = "mlm", val_fraction: float = 0.05,
                        max_val: int = 2000, seed: int = 0, cache_dir: Optional[str] = None) -> PretrainData:
    """Tokenize, pack and split ``corpus`` (ValueError for an empty corpus or a bad objective).

    ``seed`` (the data seed) fixes the NSP pairs and the validation split, independently of the
    training seed, so that runs with different training seeds are evaluated on the same blocks."""
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if seq_len < MIN_SEQ_LEN:
        raise ValueError(f"--seq_len {seq_len} is too short (at least {MIN_SEQ_LEN})")
    if len(corpus) == 0:
        raise ValueError("empty corpus: the data source holds no documents")
    if objective == "mlm+nsp" and len(corpus) < 2:
        raise ValueError("--objective mlm+nsp draws its NSP negatives from other documents, and the corpus is one "
                         "document (with --sample_by paragraph a text file without blank lines is one document; "
                         "--sample_by line makes each line a document)")
    tokenized = tokenize_corpus(corpus, tokenizer, cache_dir)
    num_tokens = int(np.sum(tokenized.with_format("numpy")["num_tokens"]))
    if num_tokens == 0:
        raise ValueError("empty corpus: tokenization produced no tokens (the documents are blank)")
    if objective == "clm":
        blocks = pack_clm(tokenized, tokenizer, seq_len, cache_dir)
    elif objective == "mlm":
        blocks = pack_mlm(tokenized, tokenizer, seq_len, cache_dir)
    else:
        blocks = pack_nsp(tokenized, tokenizer, seq_len, seed, cache_dir)
    train, val = split_blocks(blocks, val_fraction, max_val, seed)
    return PretrainData(train, val, len(corpus), num_tokens)

