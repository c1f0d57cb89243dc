"""The Megatron drop-in's learning-rate warm-up, in training iterations, from Megatron-LM's arguments,
for ``sift_ds.schedule`` (where selection starts, and the refusal of a start at or after the peak).

Megatron-LM's scheduler counts samples: with ``--train-iters`` the warm-up is ``--lr-warmup-fraction``
of ``--lr-decay-iters`` (default ``--train-iters``) or ``--lr-warmup-iters`` (default 0: no warm-up);
with ``--train-samples`` it is ``--lr-warmup-fraction`` of ``--lr-decay-samples`` (default
``--train-samples``) or ``--lr-warmup-samples``, over ``--global-batch-size`` samples per iteration.
The learning rate peaks at the first iteration past the warm-up's samples.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from ..schedule import Warmup


def megatron_args() -> Optional[Any]:
    """Megatron-LM's parsed arguments (``megatron.training``, or ``megatron`` in older trees and
    Megatron-DeepSpeed); None when Megatron-LM is not installed or has not parsed them yet.
    Megatron-LM is not part of megatron-core, hence the import here."""
    try:
        from megatron.training import get_args
    except ImportError:
        try:
            from megatron import get_args  # Megatron-DeepSpeed / Megatron-LM before core_r0.6
        except ImportError:
            return None
    try:
        return get_args()
    except AssertionError:  # not parsed yet
        return None


def lr_warmup_iterations(args: Any) -> Warmup:
    """(warm-up iterations or None, the flags that say so) of Megatron-LM's arguments ``args``."""
    if args is None:
        return None, "Megatron-LM's arguments are not available (run under its pretrain())"
    fraction = getattr(args, "lr_warmup_fraction", None)
    if getattr(args, "train_iters", None):
        if fraction is not None:
            decay = getattr(args, "lr_decay_iters", None) or args.train_iters
            return math.ceil(fraction * decay), f"--lr-warmup-fraction {fraction} of {decay} iterations"
        iters = getattr(args, "lr_warmup_iters", 0) or 0
        return iters, f"--lr-warmup-iters {iters}"
    batch = getattr(args, "global_batch_size", None)
    if getattr(args, "train_samples", None) and batch:
        if fraction is not None:
            decay = getattr(args, "lr_decay_samples", None) or args.train_samples
            samples, what = fraction * decay, f"--lr-warmup-fraction {fraction} of {decay} samples"
        else:
            samples = getattr(args, "lr_warmup_samples", 0) or 0
            what = f"--lr-warmup-samples {samples}"
        return math.ceil(samples / batch), f"{what} at --global-batch-size {batch}"
    return None, "Megatron-LM's arguments set neither --train-iters nor --train-samples"
