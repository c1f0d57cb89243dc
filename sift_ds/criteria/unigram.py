"""The corpus unigram counts table of freq_loss's "unigram" baseline (``sift.freq_loss.frequency_table``):
counted from token ids, saved as a ``.npy`` file, read back checked against the model's vocabulary."""
from __future__ import annotations

import os

import numpy as np
import torch


def unigram_counts(token_ids, vocab_size_: int) -> np.ndarray:
    """int64 [vocab_size]: how often each id occurs in ``token_ids`` (any iterable of int arrays or
    lists, e.g. the tokenized training split's ``input_ids``)."""
    counts = np.zeros(vocab_size_, dtype=np.int64)
    for ids in token_ids:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size_):
            raise ValueError(f"token id {int(ids.min() if ids.min() < 0 else ids.max())} is outside the vocabulary "
                             f"[0, {vocab_size_})")
        counts += np.bincount(ids, minlength=vocab_size_)
    return counts


def save_unigram_counts(path: str, counts: np.ndarray) -> None:
    """Write a counts table (``unigram_counts``) as a ``.npy`` file, atomically."""
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, np.asarray(counts, dtype=np.int64), allow_pickle=False)
    os.replace(tmp, path)


def load_unigram_counts(path: str, vocab_size_: int) -> np.ndarray:
    """The counts table of ``path``, checked against the model's vocabulary."""
    try:
        counts = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"sift.freq_loss.frequency_table {path}: cannot read a .npy counts table ({err})") from None
    if counts.ndim != 1 or counts.shape[0] != vocab_size_ or counts.dtype.kind not in "iu" or (counts < 0).any():
        raise ValueError(f"sift.freq_loss.frequency_table {path}: expected {vocab_size_} non-negative integer counts "
                         f"(one per vocabulary id), got {counts.dtype} of shape {counts.shape}")
    return counts


def unigram_neg_log_probs(counts) -> torch.Tensor:
    """float32 [V]: ``-log p(id)`` of the add-one smoothed unigram distribution ``(c + 1) / (sum c + V)``
    (an id never seen in the corpus gets a finite baseline)."""
    c = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    return (torch.log(c.sum() + c.numel()) - torch.log1p(c)).float()
