"""One evaluation for runs of different front-ends: the same held-out blocks, the same masks.

The pretraining job and ``run_mlm.py`` each evaluate on blocks of their own making, with masks
drawn afresh at every evaluation. To compare their final models on an equal footing, a study
holds out whole documents (``split_documents``), packs them once as ``run_mlm.py`` does
(``evaluation_blocks``: each document tokenized with its special tokens, all concatenated, cut into
blocks), draws one set of masks with a fixed seed (``fixed_masks``: BERT's 80/10/10 rule over the
non-special tokens) and scores every final model on exactly those (``evaluate``): the mean
cross-entropy over the masked tokens and their top-1 accuracy, in eval mode (no dropout), with
the model's own dense MLM head.
"""
from __future__ import annotations

import json
import lzma
import math
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np
import torch

MASK_SHARE = 0.15


def read_documents(path: str, field: str = "text") -> Iterator[str]:
    """The ``field`` of each JSON line of ``path`` (``.xz`` read as such)."""
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                record = json.loads(line)
                if field not in record:
                    raise ValueError(f"{path}:{number}: no {field!r} field")
                yield record[field]


def split_documents(texts: Sequence[str], held_share: float, seed: int = 0) -> Tuple[List[str], List[str]]:
    """(training, held-out) documents: a fixed random ``held_share`` of them held out (at least one
    of each), in their original order; a function of ``seed`` and the document count only."""
    n = len(texts)
    if n < 2:
        raise ValueError(f"a document split needs at least 2 documents, got {n}")
    if not 0.0 < held_share < 1.0:
        raise ValueError(f"held_share must be in (0, 1), got {held_share}")
    held_n = min(n - 1, max(1, int(round(held_share * n))))
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:held_n]] = True
    return [t for t, h in zip(texts, held) if not h], [t for t, h in zip(texts, held) if h]


def evaluation_blocks(texts: Iterable[str], tokenizer, seq_len: int, max_blocks: int) -> Dict[str, np.ndarray]:
    """``run_mlm.py``'s packing of ``texts``: each tokenized with its special tokens, concatenated and
    cut into blocks of ``seq_len`` (the remainder dropped); the first ``max_blocks`` of them.
    ``input_ids`` and ``special_tokens_mask``, int64 arrays [blocks, seq_len]."""
    ids: List[int] = []
    special: List[int] = []
    for text in texts:
        encoded = tokenizer(text, return_special_tokens_mask=True)
        ids += encoded["input_ids"]
        special += encoded["special_tokens_mask"]
        if len(ids) >= seq_len * max_blocks:
            break
    n = min(max_blocks, len(ids) // seq_len)
    if n == 0:
        raise ValueError(f"the held-out documents pack into no block of {seq_len} tokens")
    shape = (n, seq_len)
    return {"input_ids": np.asarray(ids[:n * seq_len], dtype=np.int64).reshape(shape),
            "special_tokens_mask": np.asarray(special[:n * seq_len], dtype=np.int64).reshape(shape)}


def fixed_masks(blocks: Dict[str, np.ndarray], mask_id: int, vocab_size: int, seed: int = 0,
                share: float = MASK_SHARE) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of BERT's masking, drawn once from ``seed``: each non-special token is a
    target with probability ``share``; a target's input is the mask token (80%), a random token
    (10%) or itself (10%); labels are -100 except at the targets."""
    rng = np.random.default_rng(seed)
    ids = blocks["input_ids"]
    target = (rng.random(ids.shape) < share) & (blocks["special_tokens_mask"] == 0)
    labels = np.where(target, ids, -100)
    draw = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[target & (draw < 0.8)] = mask_id
    swap = target & (draw >= 0.8) & (draw < 0.9)
    inputs[swap] = rng.integers(0, vocab_size, size=int(swap.sum()))
    return inputs, labels


@torch.no_grad()
def evaluate(model, inputs: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> Dict[str, float]:
    """``val_loss`` (mean cross-entropy over the target tokens), ``val_acc`` (their top-1 accuracy)
    and ``val_tokens`` of ``model`` (a masked LM, put in eval mode) on fixed ``inputs``/``labels``."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    for start in range(0, len(inputs), batch_size):
        x = torch.from_numpy(inputs[start:start + batch_size])
        y = torch.from_numpy(labels[start:start + batch_size])
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        keep = y != -100
        picked = logits[keep].double()
        total += float(torch.nn.functional.cross_entropy(picked, y[keep], reduction="sum"))
        correct += int((picked.argmax(-1) == y[keep]).sum())
        count += int(keep.sum())
    if count == 0:
        raise ValueError("no target token to evaluate")
    loss = total / count
    return {"val_loss": loss, "val_acc": correct / count, "val_tokens": count,
            "val_perplexity": math.exp(loss) if loss < 700 else math.inf}
