"""Early-exit scores with a tensor-parallel vocabulary: each TP rank scores its vocabulary shard
(``sift_ds.kernels.vocab_shard_stats``) and the partial softmax statistics are merged over the TP
group as ``vocab_parallel_cross_entropy`` merges its logits: one MAX all-reduce of the row maxima,
then one SUM all-reduce of the stacked, rescaled sums and target logits. Every TP rank ends with
bit-identical scores (the same all-reduced values, finished by the same arithmetic).
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from .. import kernels
from ..adapters import early_exit_hidden
from ..scorer import eval_mode
from .adapter import MCoreBertAdapter, labelled_positions


def merge_over_group(stats: kernels.VocabStats, group=None) -> kernels.VocabStats:
    """The statistics of the whole vocabulary from every rank's shard statistics (two all-reduces);
    the collective twin of ``kernels.reference.merge_vocab_stats``."""
    if group is None or dist.get_world_size(group) == 1:
        return stats
    m = stats.max.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    scale = torch.exp(stats.max - m)
    sums = torch.stack([scale * stats.sumexp,
                        scale * (stats.sumzexp + (stats.max - m) * stats.sumexp),
                        stats.target_logit])
    dist.all_reduce(sums, group=group)
    return kernels.VocabStats(m, sums[0], sums[1], sums[2])


def tp_group():
    """The tensor-parallel group, or None without model parallelism (a single-process model)."""
    if not parallel_state.model_parallel_is_initialized():
        return None
    return parallel_state.get_tensor_model_parallel_group()


@torch.no_grad()
def token_scores(
    adapter: MCoreBertAdapter,
    batch: Mapping[str, torch.Tensor],
    exit_layer: int,
    criterion: str = "loss",
    backend: str = "auto",
    positions: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(float32 [N] per-token CE or entropy at the labelled positions after ``exit_layer`` layers,
    int64 [N] row of each token). ``positions`` may carry ``labelled_positions(loss_mask)`` computed
    on the host copy of the batch (no device sync)."""
    flat, rows_of = positions if positions is not None else labelled_positions(batch["loss_mask"])
    modules = adapter.selection_modules(exit_layer)
    with eval_mode(modules):
        hidden = early_exit_hidden(adapter, batch, exit_layer)
        device = hidden.device
        flat, rows_of = flat.to(device), rows_of.to(device)
        rows = adapter.head_transform(adapter.rows_at(hidden, flat))
        weight, bias = adapter.vocab_projection()
        targets = batch["labels"].reshape(-1).to(device).index_select(0, flat)
        stats = kernels.vocab_shard_stats(rows, weight, bias, targets, adapter.vocab_start, backend)
    merged = merge_over_group(stats, tp_group())
    return kernels.finish_token_scores(merged, criterion), rows_of


def sequence_scores(
    adapter: MCoreBertAdapter,
    batch: Mapping[str, torch.Tensor],
    exit_layer: int,
    criterion: str = "loss",
    backend: str = "auto",
    positions: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """float32 [b]: mean early-exit score over each row's labelled positions (``-inf``: none)."""
    scores, rows_of = token_scores(adapter, batch, exit_layer, criterion, backend, positions)
    return kernels.reduce_to_sequences(scores, rows_of, batch["text"].shape[0])
