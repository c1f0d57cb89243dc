"""The gross training set: one item is ``factor = 1 / keep_ratio`` consecutive samples, stacked.

Megatron's sampler, ``consumed_train_samples`` and its resume then count *items*: an item is one
kept row, so ``--micro-batch-size`` stays the number of rows trained on and every sample counter
and checkpoint stays exact, while each micro-batch brings ``factor`` times as many rows to score.
Item ``i`` is the base samples ``i*factor .. i*factor + factor - 1``; a run resumed at
``consumed_train_samples = C`` continues with base sample ``C * factor``, as the uninterrupted run.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset


def stack_samples(samples) -> Any:
    """Samples (dicts of arrays / tensors / numbers) stacked key by key along a new axis 0."""
    first = samples[0]
    if not isinstance(first, Mapping):
        raise TypeError(f"a Megatron training sample must be a dict of arrays, got {type(first).__name__}")
    out = {}
    for key in first:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if torch.is_tensor(values[0]) else np.stack([np.asarray(v) for v in values])
    return out


def unstack_rows(batch: Mapping[str, torch.Tensor], factor: int) -> dict:
    """A collated batch of gross items ``[micro, factor, ...]`` as ``[micro * factor, ...]`` rows
    (row ``r * factor + j`` is sample ``j`` of item ``r``)."""
    out = {}
    for key, value in batch.items():
        if not torch.is_tensor(value):
            continue
        if value.dim() < 2 or value.shape[1] != factor:
            raise ValueError(f"batch key {key!r} has shape {tuple(value.shape)}; a gross batch from "
                             f"Sift.datasets_provider has [micro_batch, {factor}, ...] (is the training set wrapped?)")
        out[key] = value.reshape(value.shape[0] * factor, *value.shape[2:])
    return out


class GrossDataset(Dataset):
    """``len(base) // factor`` items; item ``i`` stacks base samples ``[i*factor, (i+1)*factor)``."""

    def __init__(self, base, factor: int):
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.base, self.factor = base, int(factor)

    def __len__(self) -> int:
        return len(self.base) // self.factor

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"gross item {index} out of range ({len(self)} items)")
        start = index * self.factor
        return stack_samples([self.base[start + j] for j in range(self.factor)])

    def __getattr__(self, name: str):  # the base dataset's attributes (config, index, ...) pass through
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


def _accepts(func: Callable, name: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def gross_datasets_provider(provider: Callable, factor: Union[int, Callable[[], int]],
                            on_call: Optional[Callable[[], None]] = None):
    """``provider`` asked for ``factor`` times the training samples, its training set wrapped in a
    ``GrossDataset``; validation and test sets unchanged. ``is_distributed`` and ``vp_stage`` are
    forwarded; ``on_call`` runs first (the start-up checks). ``factor`` may be a callable, read at
    the call (after Megatron has parsed its arguments)."""
    takes_vp_stage = _accepts(provider, "vp_stage")

    def train_valid_test_datasets_provider(train_val_test_num_samples, *args, vp_stage=None, **kwargs):
        if on_call is not None:
            on_call()
        n = int(factor() if callable(factor) else factor)
        counts = list(train_val_test_num_samples)
        if counts and counts[0] is not None:
            counts[0] = int(counts[0]) * n
        if takes_vp_stage:
            kwargs["vp_stage"] = vp_stage
        datasets = list(provider(type(train_val_test_num_samples)(counts), *args, **kwargs))
        if datasets and datasets[0] is not None and n > 1:
            datasets[0] = GrossDataset(datasets[0], n)
        return tuple(datasets)

    if hasattr(provider, "is_distributed"):
        train_valid_test_datasets_provider.is_distributed = provider.is_distributed
    train_valid_test_datasets_provider.__wrapped_provider__ = provider
    return train_valid_test_datasets_provider
