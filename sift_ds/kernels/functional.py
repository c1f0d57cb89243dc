"""Functional early-exit scorer API, re-exported by ``sift_ds.kernels``.

``sequence_scores`` / ``packed_sequence_scores`` turn hidden states that are already through the
head's transform (BERT's MLM transform, a causal LM's final norm) into one float32 score per
sequence: the mean, over its labelled positions, of the cross-entropy (``criterion="loss"``) or
prediction entropy (``criterion="entropy"``) of the vocab head ``weight`` [V, H] (tied or untied)
and ``bias`` [V] or None. ``select_topk`` ranks them. ``backend`` is "torch" (the reference twin in
``reference.py``), "triton" (the fused kernel) or "auto" (Triton on CUDA when it imports).

Both backends refuse the same inputs with a one-line error: shapes that do not fit (``ValueError``),
V = 0 (``ValueError``), integer hidden states / weight (``TypeError``), and labels / targets outside
``[0, V)`` other than the ignore index -100 (``ValueError``; ``vocab_shard_stats`` accepts the ids of
other shards and refuses only negative ones). The label check reads the labels on the host: free for
CPU tensors, one synchronisation for CUDA ones; a caller that checked them on its host copy passes
``check_targets=False`` to keep the scoring free of host syncs.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist

from .reference import (
    CRITERIA,
    IGNORE_INDEX,
    VocabStats,
    check_criterion,
    check_head,
    check_k,
    check_targets as check_target_ids,
    compact_labelled,
    finish_token_scores,
    gradient_norm_bounds_torch,
    merge_vocab_stats,
    packed_sequence_scores_torch,
    rescale_vocab_stats,
    select_topk_torch,
    token_scores_torch,
    vocab_partial_stats,
)
from .segments import per_id_sums, reduce_to_sequences

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """"auto" -> "triton" on CUDA when Triton imports, else "torch"; "triton" on a CPU tensor
    needs ``TRITON_INTERPRET=1`` (the interpreter), otherwise it is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' requested but triton does not import")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' on a CPU tensor needs TRITON_INTERPRET=1")
    return backend


def _check(rows, weight, bias, targets, with_targets: bool) -> None:
    check_head(rows, weight, bias)
    if targets.numel() != rows.shape[0]:
        raise ValueError(f"expected one target per row ({rows.shape[0]}), got shape {tuple(targets.shape)}")
    if with_targets:
        check_target_ids(targets, weight.shape[0])


def packed_sequence_scores(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    criterion: str = "loss",
    backend: str = "auto",
    *,
    check_targets: bool = True,
) -> torch.Tensor:
    """Scores of ``num_seqs`` sequences from the compacted labelled rows.

    rows [N, H] (through the head transform), weight [V, H], bias [V] or None, targets [N] vocab ids,
    seq_index [N] the sequence of each row. Returns float32 [num_seqs], ``-inf`` for no rows.
    ``check_targets=False`` skips the vocabulary-range check of the targets (module docstring).
    """
    check_criterion(criterion)
    _check(rows, weight, bias, targets, check_targets)
    if resolve_backend(backend, rows.device) == "triton":
        from .ops.triton_scorer import packed_sequence_scores_triton

        return packed_sequence_scores_triton(rows, weight, bias, targets, seq_index, num_seqs, criterion)
    return packed_sequence_scores_torch(rows, weight, bias, targets, seq_index, num_seqs, criterion)


def sequence_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    criterion: str = "loss",
    backend: str = "auto",
    *,
    check_targets: bool = True,
) -> torch.Tensor:
    """hidden [B, S, H], weight [V, H], bias [V] or None, labels [B, S] (-100 = not masked) ->
    float32 [B]: per-sequence mean CE or entropy over labelled positions, -inf where none."""
    check_criterion(criterion)
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden [B, S, H] and labels [B, S], got {tuple(hidden.shape)} and {tuple(labels.shape)}"
        )
    _check(hidden.reshape(-1, hidden.shape[-1]), weight, bias, labels, check_targets)
    if resolve_backend(backend, hidden.device) == "triton":
        from .ops.triton_scorer import sequence_scores_triton

        return sequence_scores_triton(hidden, weight, bias, labels, criterion)
    flat, seq = compact_labelled(labels)
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat)
    targets = labels.reshape(-1).index_select(0, flat)
    return packed_sequence_scores_torch(rows, weight, bias, targets, seq, hidden.shape[0], criterion)


def select_topk(scores: torch.Tensor, k: int, backend: str = "auto") -> torch.Tensor:
    """LongTensor[k]: the k largest scores, largest first; non-finite below all finite; ties to the
    lower index. "triton" ranks them in one small kernel (no sort, no sync)."""
    if not torch.is_tensor(scores) or scores.dim() != 1:
        raise ValueError(f"scores must be a 1-D tensor, got {getattr(scores, 'shape', type(scores).__name__)}")
    k = check_k(k, scores.numel())
    if resolve_backend(backend, scores.device) == "triton":
        from .ops.triton_topk import select_topk_triton

        return select_topk_triton(scores, k)
    return select_topk_torch(scores, k)


def token_scores(rows, weight, bias, targets, criterion: str = "loss", backend: str = "auto", *,
                 check_targets: bool = True) -> torch.Tensor:
    """float32 [N]: CE or entropy of each row through the vocab head (rows [N, H], targets [N])."""
    check_criterion(criterion)
    _check(rows, weight, bias, targets, check_targets)
    if resolve_backend(backend, rows.device) == "triton":
        from .ops.triton_scorer import token_scores_triton

        return token_scores_triton(rows, weight, bias, targets, criterion)
    return token_scores_torch(rows, weight, bias, targets, criterion)


def token_gradient_norms(rows, weight, bias, targets, *, check_targets: bool = True) -> torch.Tensor:
    """float32 [N]: ``||softmax(z) - onehot(target)||_2`` of each row through the vocab head (the
    importance-sampling criterion's per-token statistic). The torch twin on every device: the fused
    kernel keeps no sum of squared probabilities (docs/kernels.md)."""
    _check(rows, weight, bias, targets, check_targets)
    return gradient_norm_bounds_torch(rows, weight, bias, targets)


def vocab_shard_stats(rows, weight_shard, bias_shard, targets, vocab_start: int = 0, backend: str = "auto") -> VocabStats:
    """Partial statistics of one vocabulary shard (Megatron-style tensor parallelism: W split over V).

    ``targets`` are global ids, ``weight_shard[0]`` is id ``vocab_start``. To finish,
    ``merge_vocab_stats_across`` (over the ranks holding the other shards) or ``merge_vocab_stats``
    (shards held in one process), then ``finish_token_scores``.
    Targets of other shards are legal (they add no target logit here); negative ones other than -100 are not.
    """
    check_head(rows, weight_shard, bias_shard)
    check_target_ids(targets, None)
    if resolve_backend(backend, rows.device) == "triton":
        from .ops.triton_scorer import vocab_partial_stats_triton

        return vocab_partial_stats_triton(rows, weight_shard, bias_shard, targets, vocab_start)
    return vocab_partial_stats(rows, weight_shard, bias_shard, targets, vocab_start)


def merge_vocab_stats_across(stats: VocabStats, group=None) -> VocabStats:
    """The statistics of the whole vocabulary from every rank's ``vocab_shard_stats`` (each rank of
    ``group`` holds one shard): ``merge_vocab_stats`` with collectives, as Megatron's
    ``vocab_parallel_cross_entropy`` merges its logits: one MAX all-reduce of the row maxima, then one
    SUM all-reduce of the stacked, rescaled sums and target logits. Every rank ends with identical
    statistics. A no-op for a group of one rank (or ``None`` without a process group)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return stats
    m = stats.max.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    rescaled = rescale_vocab_stats(stats, m)
    sums = torch.stack([rescaled.sumexp, rescaled.sumzexp, rescaled.target_logit])
    dist.all_reduce(sums, group=group)
    return VocabStats(m, sums[0], sums[1], sums[2])


__all__ = [
    "BACKENDS",
    "CRITERIA",
    "check_target_ids",
    "IGNORE_INDEX",
    "VocabStats",
    "compact_labelled",
    "finish_token_scores",
    "merge_vocab_stats",
    "merge_vocab_stats_across",
    "packed_sequence_scores",
    "per_id_sums",
    "reduce_to_sequences",
    "resolve_backend",
    "select_topk",
    "sequence_scores",
    "token_scores",
    "token_scores_torch",
    "token_gradient_norms",
    "vocab_shard_stats",
    "triton_available",
    "vocab_partial_stats",
]
