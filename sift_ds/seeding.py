"""Seed mixing: one explicit, documented way to turn a tuple of integers into a seed.

Every stateless random choice of sift_ds (the selector's warm-up subsets and random picks, the
pretraining loader's data order and masks) is a pure function of a key such as
``(seed, step, micro_step, rank)``, so a resumed run draws exactly what the uninterrupted run drew,
with no generator state to save. The key is mixed by numpy's ``SeedSequence`` (a documented hash,
stable across processes, platforms and Python versions, unlike ``hash(tuple)``).
"""
from __future__ import annotations

import numpy as np
import torch


def derive_seed(*key: int) -> int:
    """A 63-bit seed from non-negative ints (``SeedSequence(key).generate_state``, top bit dropped)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(*key: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*key)``."""
    return torch.Generator().manual_seed(derive_seed(*key))
