"""ZeRO stage 3: running the selection pass's submodules outside the engine's forward.

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

import deepspeed
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
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
    missing = [p for p in params if getattr(p, "ds_status", None) == ZeroParamStatus.NOT_AVAILABLE]
    with _hooks_suspended(modules), deepspeed.zero.GatheredParameters(missing, modifier_rank=None):
        yield
