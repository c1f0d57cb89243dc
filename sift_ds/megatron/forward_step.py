"""The wrapped ``forward_step``: read the gross micro-batch (tensor-parallel rank 0 reads and
broadcasts it, on gloo too), select, call the script's ``forward_step`` on the kept rows, and add
the SIFT telemetry to the loss dict its ``loss_func`` returns.

Megatron calls ``forward_step_func(data_iterator, model)`` once per micro-batch (sometimes with a
third argument) and reduces the loss dict itself: a ``[sum, count]`` tensor is summed over the
micro-batches and the data-parallel group, shown as ``sum / count``, and averaged over the log
interval in the log line and in TensorBoard, so the ``sift/*`` values (``sift_ds.telemetry``: the
same keys as the other front-ends, the timing keys included) arrive there without a callback. A
micro-step's time runs from one training ``forward_step`` call to the next call, training or
evaluation (its backward included); its timing pairs are sent with a later micro-step: those whose
marks can be read without a device sync, else the oldest. The run's first micro-step has none to
send, so Megatron (which takes an iteration's keys from its first micro-batch) shows no timing keys
for the first iteration.
Megatron-DeepSpeed averages 1-element values instead: with a DeepSpeed engine as the model the
telemetry is sent as means.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Mapping, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.num_microbatches_calculator import get_num_microbatches

from ..row_exchange import pack_rows, unpack_rows
from ..telemetry import SCORE_KEYS
from ..weighted_loss import apply_row_weights
from .adapter import unwrap_model
from .mlm_head import apply_sparse_mlm_head
from .datasets import unstack_rows
from .schedule import megatron_args


def wrap_forward_step(sift, forward_step_func: Callable) -> Callable:
    """See the module docstring; evaluation (the model in eval mode) passes through untouched. With
    ``sift.sparse_mlm_head`` the model gets the masked-positions-only MLM head (``mlm_head.py``; a
    ``BertModel`` only), SIFT on or off."""

    @functools.wraps(forward_step_func)  # Megatron inspects the signature: show the script's own
    def forward_step(data_iterator, model, *args, **kwargs):
        if sift.sparse_mlm_head:
            apply_sparse_mlm_head(model)  # once per model: a patched forward is left as it is
        # The innermost module's flag: a DeepSpeed engine's eval() sets its module's only.
        if not sift.config.enabled or not unwrap_model(model).training:
            if sift.config.enabled:
                sift.frontend.telemetry.interrupt()  # the last training micro-step ends here
            return forward_step_func(data_iterator, model, *args, **kwargs)
        sift.check_parallelism()
        device = sift.adapter(model).vocab_projection()[0].device
        telemetry = sift.frontend.telemetry
        start = telemetry.begin()  # a micro-step ends where the next begins
        gross = read_gross_batch(data_iterator, sift.factor, device)
        step, micro_step = sift.position(model)
        kept, stats = sift.select(model, gross, step, micro_step)
        telemetry.selected(start)
        stats = {**stats, **telemetry.ready_timing_pairs()}
        output_tensor, loss_func = forward_step_func(iter([kept]), model, *args, **kwargs)
        return output_tensor, wrap_loss_func(loss_func, stats, pairs=not hasattr(model, "global_steps"),
                                             row_weights=sift.last.weights)

    return forward_step


def read_gross_batch(data_iterator, factor: int, device: torch.device) -> Dict[str, torch.Tensor]:
    """This micro-step's gross rows ``[micro * factor, ...]`` on every tensor-parallel rank.

    Tensor-parallel rank 0 reads (Megatron gives the other ranks no iterator unless the provider is
    ``is_distributed``; their iterators, if any, are left alone, as Megatron's own ``get_batch``
    does) and broadcasts within the TP group. Megatron's ``broadcast_data`` hard-codes ``.cuda()``;
    this broadcast uses the model's device, so it works on gloo as well as NCCL."""
    tp = parallel_state.get_tensor_model_parallel_world_size() if parallel_state.model_parallel_is_initialized() else 1
    first = tp == 1 or parallel_state.get_tensor_model_parallel_rank() == 0
    batch = None
    if first:
        if data_iterator is None:
            raise ValueError("tensor-parallel rank 0 got no data iterator in training")
        batch = unstack_rows(next(data_iterator), factor)
    if tp > 1:
        batch = broadcast_batch(batch, parallel_state.get_tensor_model_parallel_src_rank(),
                                parallel_state.get_tensor_model_parallel_group(), device)
    return batch


def broadcast_batch(batch: Optional[Mapping[str, torch.Tensor]], src: int, group, device) -> Dict[str, torch.Tensor]:
    """``batch`` of global rank ``src`` on every rank of ``group``: its layout as one small object
    broadcast, its tensors packed into one int32 tensor broadcast (``row_exchange``'s packing)."""
    meta = [None]
    if dist.get_rank() == src:
        rows = next(iter(batch.values())).shape[0]
        packed, layout = pack_rows(dict(batch), rows)
        packed = packed.to(device)
        meta = [(tuple(packed.shape), layout)]
    dist.broadcast_object_list(meta, src=src, group=group, device=device)
    shape, layout = meta[0]
    if dist.get_rank() != src:
        packed = torch.empty(shape, dtype=torch.int32, device=device)
    dist.broadcast(packed, src=src, group=group)
    return unpack_rows(packed, layout)


def wrap_loss_func(loss_func: Callable, stats: Dict[str, torch.Tensor], pairs: bool = True,
                   row_weights: Optional[torch.Tensor] = None) -> Callable:
    """``loss_func`` whose loss dict (the last element of its 2- or 3-tuple) also carries ``stats``;
    with ``row_weights`` (importance sampling, ``Selection.weights``) the per-token loss ``[b, s]`` it
    is given has each row scaled by its weight first (the script's masking and normalisation stay)."""
    if not pairs:
        stats = {k: (v[0] / v[1].clamp_min(1)).reshape(1) for k, v in stats.items()}

    @functools.wraps(loss_func)
    def sift_loss_func(output_tensor, *args, **kwargs):
        if row_weights is not None:
            output_tensor = apply_row_weights(output_tensor, row_weights)  # [b, s]
        out = loss_func(output_tensor, *args, **kwargs)
        if kwargs.get("non_loss_data") or not isinstance(out, tuple) or not isinstance(out[-1], dict):
            return out
        return (*out[:-1], {**out[-1], **stats})

    return sift_loss_func


def loss_dict_stats(stats: Dict[str, torch.Tensor], by_score: bool, with_dropped: bool = True) -> Dict[str, torch.Tensor]:
    """A selection's ``sift/*`` ``[sum, count]`` pairs as the loss dict carries them: Megatron sums them
    over the micro-batches and data-parallel ranks and shows sum / count. It counts an iteration whose
    loss dict holds a NaN (0 / 0) as failed, so the score statistics are left out where nothing was
    scored (warm-up) or nothing can be dropped (keep ratio 1)."""
    left_out = set() if by_score else set(SCORE_KEYS)
    if not with_dropped:
        left_out.add("sift/score_dropped_mean")
    return {k: v for k, v in stats.items() if k not in left_out}


def num_microbatches() -> Optional[int]:
    """Megatron's micro-batches per iteration, or None where its calculator is not set up."""
    try:
        return int(get_num_microbatches())
    except Exception:  # noqa: BLE001 - not initialised (a script without Megatron-LM's training loop)
        return None


def current_iteration(model) -> int:
    """The training iteration: a DeepSpeed engine's ``global_steps`` (Megatron-DeepSpeed), else
    Megatron-LM's ``args.curr_iteration`` (``megatron.training``, or ``megatron`` in older trees).
    Megatron-LM is not part of megatron-core, hence the import here."""
    if hasattr(model, "global_steps"):
        return int(model.global_steps)
    args = megatron_args()
    if args is None:
        raise RuntimeError("Sift needs the training iteration: run under Megatron-LM's pretrain(), or pass "
                           "Sift(config, iteration=callable)")
    step = getattr(args, "curr_iteration", None)
    return int(step if step is not None else args.iteration)
