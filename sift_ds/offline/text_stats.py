"""Free text statistics of a training block, computed on its token ids (float64, no model): the
block's unigram entropy and its unique-token share. Special tokens ([CLS], [SEP], padding) are left
out, so that the statistics describe the text only."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np


def text_tokens(ids: np.ndarray, special: Optional[np.ndarray] = None) -> np.ndarray:
    """The block's token ids without the special positions (``special_tokens_mask`` non-zero)."""
    ids = np.asarray(ids)
    return ids if special is None else ids[np.asarray(special) == 0]


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy in nats of the block's empirical token distribution, ``-sum p log p`` (0 for an empty block)."""
    if len(tokens) == 0:
        return 0.0
    counts = np.unique(tokens, return_counts=True)[1].astype(np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def unique_share(tokens: np.ndarray) -> float:
    """Distinct token ids over tokens (0 for an empty block)."""
    return float(len(np.unique(tokens)) / len(tokens)) if len(tokens) else 0.0


TEXT_SCORES: Dict[str, Callable[[np.ndarray], float]] = {
    "unigram_entropy": unigram_entropy,
    "unique_share": unique_share,
}


def block_text_scores(blocks, name: str, batch_size: int = 4096) -> np.ndarray:
    """float64 [n]: the statistic ``name`` of every block of a ``datasets.Dataset`` of blocks."""
    stat = TEXT_SCORES[name]
    rows = blocks.with_format("numpy")
    out = np.empty(len(blocks), dtype=np.float64)
    for start in range(0, len(blocks), batch_size):
        chunk = rows[start : start + batch_size]
        special = chunk.get("special_tokens_mask")
        for i, ids in enumerate(chunk["input_ids"]):
            out[start + i] = stat(text_tokens(ids, None if special is None else special[i]))
    return out
