"""Running a few submodules outside the engine's forward under ZeRO stage 3.

Under stage 3 every parameter is partitioned and DeepSpeed fetches it through forward hooks on each
submodule, while a coordinator records the order in which submodules run so that it can prefetch
the next ones. The selection pass runs embeddings, the prefix layers and the MLM head *before* the
training forward; letting those calls through the hooks would put them into the coordinator's
trace, which then disagrees with the recorded order every step ("Invalidate trace cache") and
disables prefetching. So the pass gathers the parameters it needs explicitly, once, and runs with
those modules' ZeRO hooks suspended.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Iterable, Iterator, List

from torch import nn


def _unique_params(modules: Iterable[nn.Module]) -> List[nn.Parameter]:
    seen, params = set(), []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:  # the tied decoder weight is the word-embedding weight
                seen.add(id(p))
                params.append(p)
    return params


@contextlib.contextmanager
def _hooks_suspended(modules: Iterable[nn.Module]) -> Iterator[None]:
    saved = []
    for m in modules:
        for sub in m.modules():
            saved.append((sub, sub._forward_pre_hooks, sub._forward_hooks))
            sub._forward_pre_hooks, sub._forward_hooks = OrderedDict(), OrderedDict()
    try:
        yield
    finally:
        for sub, pre, post in saved:
            sub._forward_pre_hooks, sub._forward_hooks = pre, post


@contextlib.contextmanager
def full_parameters(modules: List[nn.Module]) -> Iterator[None]:
    """Inside, ``modules`` hold their full parameters (a no-op unless ZeRO-3 partitioned them)."""
    params = _unique_params(modules)
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    missing = [p for p in params if getattr(p, "ds_status", None) == ZeroParamStatus.NOT_AVAILABLE]
    with _hooks_suspended(modules), deepspeed.zero.GatheredParameters(missing, modifier_rank=None):
        yield


@contextlib.contextmanager
def eval_mode(modules: List[nn.Module]) -> Iterator[None]:
    """Dropout off for the selection pass; the previous train/eval flags are restored after."""
    flags = [(sub, sub.training) for m in modules for sub in m.modules()]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for sub, flag in flags:
            sub.training = flag
