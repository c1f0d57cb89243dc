"""Fused Triton early-exit scorer: CE / entropy through a vocab head without N x V logits.

The math is the one of ``reference.py``; only the schedule differs. For rows ``x`` [N, H], the
vocabulary head ``W`` [V, H] (BERT's tied decoder, or a causal LM's untied head) and bias ``b`` [V]
(or none), the logits ``z = x W^T + b`` are produced one
[BLOCK_N, BLOCK_V] tile at a time by ``tl.dot`` (fp32 accumulation, loop over H) and folded at
once into online-softmax statistics per row, so that no N x V buffer ever exists:

    m = max z,   s = sum exp(z - m),   q = sum (z - m) exp(z - m),   z_t = z[target]

CE = m + log s - z_t and entropy = log s - q / s both come out of the same pass.

Three kernels, launched back to back without a host synchronisation:

1. ``_vocab_stats_kernel`` -- grid = (row blocks) x (vocabulary splits), in grouped order so that
   the programs running together share the same W columns (W stays in L2). Each program streams
   its split of the vocabulary and writes partial statistics ``part[4, num_splits, N]``.
2. ``_merge_kernel`` -- merges the splits of each row in a fixed order (deterministic; no
   atomics) and writes either the merged statistics or the finished per-row CE / entropy.
3. ``_segment_mean_kernel`` -- one program per sequence: mean of its (contiguous) rows' scores,
   ``-inf`` for a sequence with none.

``sequence_scores_triton`` compacts the labelled positions on the device (a stable partition by
cumsum + scatter, the count stays a device tensor): row blocks past the count return at once, so
only the ~15% labelled rows cost vocabulary work and nothing waits on the host.

Interpreter (``TRITON_INTERPRET=1``, CPU tensors): the kernels are built as interpreted functions
at call time (so the environment variable may be set after this module is imported), run with one
small fixed configuration, and cast the loaded tiles to fp32 before ``tl.dot`` (``DOT_DTYPE``):
triton 3.9's interpreter multiplies bf16 tiles as their raw uint16 bits.

This module is the functional API; the kernels are ``scorer_kernels``, their construction, autotuning
and launch ``scorer_launch``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..reference import IGNORE_INDEX, VocabStats, check_criterion
from .scorer_kernels import _MODE_STATS, _MODES
from .scorer_launch import (_EXPECTED_LABELLED_FRACTION, _check_inputs, _device_guard, _launch_merge,
                            _launch_segment_mean, _launch_stats, _output, _scratch)


def vocab_partial_stats_triton(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    vocab_start: int = 0,
    *,
    num_splits: Optional[int] = None,
) -> VocabStats:
    """Fused twin of ``reference.vocab_partial_stats``: statistics of ``rows @ weight.T + bias``
    over the vocabulary slice ``weight`` [V_s, H] whose first row has the global id ``vocab_start``.

    For a Megatron-style vocab-parallel head, each rank calls this on its shard, merges the
    statistics with ``api.merge_vocab_stats_across`` and finishes with ``finish_token_scores``.
    """
    _check_inputs(rows, weight, bias, targets)
    n = rows.shape[0]
    merged = torch.empty((4, n), dtype=torch.float32, device=rows.device)
    if n:
        with _device_guard(rows.device):
            part = _launch_stats(rows, weight, bias, targets, int(vocab_start), num_splits=num_splits)
            _launch_merge(part, _MODE_STATS, merged)
    return VocabStats(*merged.unbind(0))


def _token_scores(rows, weight, bias, targets, criterion="loss", *, out=None, num_splits=None):
    check_criterion(criterion)
    _check_inputs(rows, weight, bias, targets)
    out = _output(out, rows.shape[0], rows.device)
    if rows.shape[0]:
        with _device_guard(rows.device):
            part = _launch_stats(rows, weight, bias, targets, 0, num_splits=num_splits)
            _launch_merge(part, _MODES[criterion], out)
    return out


def token_scores_triton(rows, weight, bias, targets, criterion: str = "loss") -> torch.Tensor:
    """Per-row CE or entropy [N] (float32) through the vocab head; fused twin of
    ``reference.token_scores_torch``."""
    return _token_scores(rows, weight, bias, targets, criterion)


def _packed_scores(rows, weight, bias, targets, seq_index, num_seqs, criterion="loss", *, out=None,
                   num_splits=None):
    check_criterion(criterion)
    _check_inputs(rows, weight, bias, targets)
    if tuple(seq_index.shape) != (rows.shape[0],):
        raise ValueError(f"seq_index must be [N]={rows.shape[0]}, got {tuple(seq_index.shape)}")
    n, device = rows.shape[0], rows.device
    out = _output(out, num_seqs, device)
    if n == 0:
        return out.fill_(float("-inf"))
    # Rows grouped by sequence (stable sort on the device); the kernel gathers them in that order,
    # and sequence i owns the sorted rows [bounds[i], bounds[i + 1]).
    seq_index = seq_index.to(device=device, dtype=torch.int64)
    order = torch.argsort(seq_index, stable=True)
    bounds = torch.searchsorted(seq_index[order], torch.arange(num_seqs + 1, device=device))
    with _device_guard(device):
        part = _launch_stats(rows, weight, bias, targets, 0, row_idx=order, num_splits=num_splits)
        tok = _launch_merge(part, _MODES[criterion], _scratch((n,), device))
        _launch_segment_mean(tok, bounds, out)
    return out


def packed_sequence_scores_triton(rows, weight, bias, targets, seq_index, num_seqs: int, criterion: str = "loss"):
    """float32 [num_seqs]: mean CE / entropy of each sequence's rows (``seq_index`` [N] gives the
    sequence of each row, in any order); ``-inf`` where a sequence has no row. No host sync."""
    return _packed_scores(rows, weight, bias, targets, seq_index, num_seqs, criterion)


def _stable_partition(mask: torch.Tensor):
    """Permutation putting the True positions of the 1-D ``mask`` first, both groups in their
    original order, and their number as a device tensor: cumsum + scatter, no host sync."""
    n = mask.numel()
    keep = mask.to(torch.int64)
    before = torch.cumsum(keep, 0)  # labelled positions up to and including i
    count = before[-1:]
    dest = torch.where(mask, before - 1, count + torch.arange(n, device=mask.device) - before)
    perm = torch.empty(n, dtype=torch.int64, device=mask.device)
    perm.scatter_(0, dest, torch.arange(n, device=mask.device))
    return perm, count


def _sequence_scores(hidden, weight, bias, labels, criterion="loss", *, out=None, num_splits=None,
                     labelled_fraction=_EXPECTED_LABELLED_FRACTION):
    check_criterion(criterion)
    if not 0.0 < labelled_fraction <= 1.0:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {labelled_fraction!r}")
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden [B, S, H] and labels [B, S], got {tuple(hidden.shape)}, {tuple(labels.shape)}")
    B, S, H = hidden.shape
    device = hidden.device
    x = hidden.reshape(B * S, H)
    _check_inputs(x, weight, bias)
    out = _output(out, B, device)
    if B * S == 0:
        return out.fill_(float("-inf"))
    flat_labels = labels.reshape(-1).to(device)
    mask = flat_labels != IGNORE_INDEX
    perm, count = _stable_partition(mask)  # labelled rows first, in (b, s) order
    bounds = torch.zeros(B + 1, dtype=torch.int64, device=device)
    torch.cumsum(mask.view(B, S).sum(dim=1), 0, out=bounds[1:])
    n_est = max(1, math.ceil(labelled_fraction * B * S))
    with _device_guard(device):
        part = _launch_stats(x, weight, bias, flat_labels, 0, row_idx=perm, count=count, n_rows_est=n_est,
                             num_splits=num_splits)
        tok = _launch_merge(part, _MODES[criterion], _scratch((B * S,), device), count=count)
        _launch_segment_mean(tok, bounds, out)
    return out


def sequence_scores_triton(hidden, weight, bias, labels, criterion: str = "loss", *,
                           labelled_fraction: float = _EXPECTED_LABELLED_FRACTION) -> torch.Tensor:
    """float32 [B]: mean CE / entropy over the labelled positions (label != -100) of each
    sequence, ``-inf`` where none. Labelled rows are compacted on the device; no host sync.

    The labelled count stays on the device, so the vocabulary split is planned for
    ``labelled_fraction`` of the ``B * S`` positions (0.15: BERT's masking; a causal LM labels
    nearly every position: pass 1.0). It steers the launch grid only, never the result."""
    return _sequence_scores(hidden, weight, bias, labels, criterion, labelled_fraction=labelled_fraction)


__all__ = [
    "packed_sequence_scores_triton",
    "sequence_scores_triton",
    "token_scores_triton",
    "vocab_partial_stats_triton",
]
