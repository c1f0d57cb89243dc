"""Batch-size facts shared by the library and the applications: DeepSpeed's batch rule, the world
size before a process group exists, and the row count of a batch dict."""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, NamedTuple

import torch

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


class BatchSizes(NamedTuple):
    micro: int  # train_micro_batch_size_per_gpu: rows trained per rank per micro-step
    grad_accum: int  # gradient_accumulation_steps
    total: int  # train_batch_size = micro x grad_accum x world

    def as_ds_config(self) -> Dict[str, int]:
        return dict(zip(BATCH_KEYS, (self.total, self.micro, self.grad_accum)))


def world_size_from_env() -> int:
    """The world size the launcher announced (torchrun / deepspeed: WORLD_SIZE; mpirun: OMPI_...)."""
    return int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))


def resolve_batch_sizes(ds_config: Mapping[str, Any], world: int) -> BatchSizes:
    """DeepSpeed's rule, checked up front: train_batch_size = micro x grad-accum x world. Any two of
    the three keys fix the third ("auto" counts as absent); a ValueError names the keys at fault."""
    values = {}
    for key in BATCH_KEYS:
        value = ds_config.get(key)
        if value is None or value == "auto":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ds_config {key} must be a positive integer, got {value!r}")
        values[key] = value
    total, micro, gas = (values.get(k) for k in BATCH_KEYS)
    if total is None and micro is None:
        raise ValueError("ds_config needs train_micro_batch_size_per_gpu or train_batch_size")
    if micro is None:
        gas = gas or 1
        if total % (gas * world):
            raise ValueError(f"ds_config train_batch_size={total} is not divisible by gradient_accumulation_steps={gas}"
                             f" x world size {world}")
        micro = total // (gas * world)
    elif gas is None:
        gas = 1 if total is None else total // (micro * world)
        if total is not None and (gas < 1 or micro * gas * world != total):
            raise ValueError(f"ds_config train_batch_size={total} is not a multiple of train_micro_batch_size_per_gpu"
                             f"={micro} x world size {world}")
    total = total if total is not None else micro * gas * world
    if micro * gas * world != total:
        raise ValueError(
            f"batch sizes do not add up: train_micro_batch_size_per_gpu={micro} x gradient_accumulation_steps={gas}"
            f" x world size {world} = {micro * gas * world}, but train_batch_size={total}"
        )
    return BatchSizes(micro, gas, total)


def batch_rows(batch: Mapping[str, torch.Tensor]) -> int:
    """Leading dimension shared by every tensor of the batch (ValueError otherwise)."""
    sizes: Dict[str, int] = {k: v.shape[0] for k, v in batch.items() if torch.is_tensor(v) and v.dim() > 0}
    if not sizes:
        raise ValueError("batch has no tensors")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch tensors disagree on the leading (batch) dimension: {sizes}")
    return next(iter(sizes.values()))
