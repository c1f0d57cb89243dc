"""Torch reference twin of the fused early-exit scorer.

Everything the Triton kernel computes is defined here first, in plain torch and fp32:

* ``vocab_partial_stats`` -- per-row online-softmax statistics over one slice of the vocabulary
  (running max ``m``, ``s = sum exp(z - m)``, ``q = sum (z - m) exp(z - m)`` and the target logit);
* ``merge_vocab_stats`` -- the deterministic merge of such partials (vocabulary split across
  programs, or across tensor-parallel ranks in Megatron style);
* ``finish_token_scores`` -- cross-entropy ``lse - z[target]`` or entropy ``log s - q / s``;
* ``reduce_to_sequences`` (``segments``) -- per-sequence mean over labelled positions, ``-inf`` where
  none, summed without atomics, in the same order on every device.

The logits here *are* materialised (a chunk of rows at a time); avoiding that is the kernel's job.
"""
from __future__ import annotations

import operator
from typing import NamedTuple, Optional, Sequence

import torch

from .segments import reduce_to_sequences

IGNORE_INDEX = -100
CRITERIA = ("loss", "entropy")
# The reference materialises logits a chunk of rows at a time: fp32 logits and two temporaries of
# that size stay under this many bytes whatever V is (~85 rows at V 128k, ~680 at V 30k).
_LOGITS_BUDGET_BYTES = 128 * 2**20
# On a CPU the chunk is sized to stay in a core's L2 cache instead (16 rows at V 8k): the softmax
# passes over the logits then read the cache rather than memory, and the projection stays a GEMM.
_CPU_LOGITS_BUDGET_BYTES = 2**20
_CPU_MIN_ROWS = 8


def _row_chunk(vocab_size: int, device: Optional[torch.device] = None) -> int:
    if device is not None and torch.device(device).type == "cpu":
        return max(_CPU_MIN_ROWS, _CPU_LOGITS_BUDGET_BYTES // (2 * 4 * max(vocab_size, 1)))
    return max(1, _LOGITS_BUDGET_BYTES // (3 * 4 * max(vocab_size, 1)))


class VocabStats(NamedTuple):
    """Online-softmax statistics of rows of logits ``z`` over a slice of the vocabulary (fp32, [N])."""

    max: torch.Tensor  # m = max_v z_v
    sumexp: torch.Tensor  # s = sum_v exp(z_v - m)
    sumzexp: torch.Tensor  # q = sum_v (z_v - m) exp(z_v - m)
    target_logit: torch.Tensor  # z[target] if the target falls in this slice, else 0


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def check_head(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """One-line errors for what both backends refuse: rows [N, H], weight [V, H] with V > 0, bias [V]
    or None, all floating point (integer hidden states are a caller's bug, e.g. token ids)."""
    if rows.dim() != 2 or weight.dim() != 2 or rows.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected rows [N, H] and weight [V, H] with the same H, got {tuple(rows.shape)} and {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError("empty vocabulary: weight has 0 rows (V = 0)")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape [V] = ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in (("hidden states", rows), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")


def check_targets(targets: torch.Tensor, vocab_size: Optional[int]) -> None:
    """Targets must be vocabulary ids in [0, vocab_size) or the ignore index (-100); with
    ``vocab_size=None`` (a tensor-parallel shard: ids of other shards are legal) only negative ids
    other than -100 are refused. Reads the targets on the host: one sync for a CUDA tensor."""
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer vocabulary ids, got {targets.dtype}")
    if targets.numel() == 0:
        return
    bad = (targets < 0) & (targets != IGNORE_INDEX)
    if vocab_size is not None:
        bad |= targets >= vocab_size
    if bool(bad.any()):
        first = int(targets.reshape(-1)[bad.reshape(-1)][0])
        where = f"[0, {vocab_size})" if vocab_size is not None else "[0, V)"
        raise ValueError(
            f"label/target {first} is outside the vocabulary {where} and is not the ignore index {IGNORE_INDEX} "
            f"({int(bad.sum())} such)"
        )


def check_k(k, n: int) -> int:
    """``k`` for a top-k of ``n`` scores: an integer (not a bool, not a float) in [0, n]."""
    if isinstance(k, bool) or (torch.is_tensor(k) and (k.dtype == torch.bool or k.is_floating_point())):
        raise TypeError(f"k must be an integer, got {type(k).__name__} {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an integer, got {type(k).__name__} {k!r}") from None
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    return k


def compact_labelled(labels: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """Flat row indices and sequence ids of the labelled positions of ``labels`` [B, S]: those that
    are not the ignore index or, given ``mask`` [B, S] (Megatron's ``loss_mask``), where it is non-zero.

    On a CUDA tensor this is one host synchronisation (the count is data dependent); the engine
    calls it on the host copy of the labels, before the batch is moved to the device.
    """
    if labels.dim() != 2 or (mask is not None and mask.shape != labels.shape):
        raise ValueError(f"labels must be [batch, seq] (and a mask of the same shape), got shape {tuple(labels.shape)}"
                         + (f" and mask {tuple(mask.shape)}" if mask is not None else ""))
    labelled = labels != IGNORE_INDEX if mask is None else mask != 0
    flat = torch.nonzero(labelled.reshape(-1), as_tuple=False).squeeze(1)
    return flat, torch.div(flat, labels.shape[1], rounding_mode="floor")


def vocab_partial_stats(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    vocab_start: int = 0,
    sumzexp: bool = True,
) -> VocabStats:
    """Statistics of ``z = rows @ weight.T + bias`` for the vocabulary slice ``weight`` [V_s, H].

    ``targets`` are global vocabulary ids; ``vocab_start`` is the id of ``weight[0]``.
    ``sumzexp=False`` skips ``q`` (zeros), which only the entropy needs.
    """
    check_head(rows, weight, bias)
    n, v = rows.shape[0], weight.shape[0]
    outs = []
    w = weight.float()
    b = None if bias is None else bias.float()
    chunk = _row_chunk(v, rows.device)
    for lo in range(0, max(n, 1), chunk):
        z = torch.nn.functional.linear(rows[lo : lo + chunk].float(), w, b)
        m = z.amax(dim=1)
        local = targets[lo : lo + chunk].long() - vocab_start
        inside = (local >= 0) & (local < v)
        zt = torch.gather(z, 1, local.clamp(0, v - 1)[:, None]).squeeze(1)
        z.sub_(m[:, None])  # z - m, in place: each pass below reads one chunk-sized buffer
        if sumzexp:
            e = torch.exp(z)
            s, q = e.sum(dim=1), torch.linalg.vecdot(z, e)
        else:
            s, q = z.exp_().sum(dim=1), torch.zeros_like(m)
        outs.append((m, s, q, torch.where(inside, zt, torch.zeros_like(zt))))
    if n == 0:
        empty = rows.new_zeros(0, dtype=torch.float32)
        return VocabStats(empty, empty, empty, empty)
    return VocabStats(*(torch.cat(parts) for parts in zip(*outs)))


def rescale_vocab_stats(stats: VocabStats, new_max: torch.Tensor) -> VocabStats:
    """``stats`` expressed relative to a max ``new_max >= stats.max`` (the step every merge of
    vocabulary slices takes before it adds them): ``s`` scaled by ``exp(m_i - m)``, and
    ``sum (z - m) e^{z - m} = e^{m_i - m} * (q_i + (m_i - m) s_i)``."""
    scale = torch.exp(stats.max - new_max)
    return VocabStats(new_max, scale * stats.sumexp, scale * (stats.sumzexp + (stats.max - new_max) * stats.sumexp),
                      stats.target_logit)


def merge_vocab_stats(parts: Sequence[VocabStats]) -> VocabStats:
    """Merge statistics of disjoint vocabulary slices, in the order given (deterministic).

    ``merge_vocab_stats_across`` (``api.py``) is the same merge over tensor-parallel ranks, with collectives.
    """
    m = torch.stack([p.max for p in parts]).amax(dim=0)
    s = torch.zeros_like(m)
    q = torch.zeros_like(m)
    zt = torch.zeros_like(m)
    for p in parts:
        r = rescale_vocab_stats(p, m)
        s, q, zt = s + r.sumexp, q + r.sumzexp, zt + r.target_logit
    return VocabStats(m, s, q, zt)


def finish_token_scores(stats: VocabStats, criterion: str) -> torch.Tensor:
    """Cross-entropy (``logsumexp(z) - z[target]``) or entropy (``log s - q / s``) per row, clamped
    at 0 (both are >= 0; rounding gives -1e-7 at V = 1). A row whose target is the ignore index has
    no target logit: its "CE" is max(logsumexp, 0), not a loss (the sequence scores drop those rows)."""
    check_criterion(criterion)
    if criterion == "loss":
        return (stats.max + torch.log(stats.sumexp) - stats.target_logit).clamp_min(0.0)
    return (torch.log(stats.sumexp) - stats.sumzexp / stats.sumexp).clamp_min(0.0)


def token_scores_torch(rows, weight, bias, targets, criterion: str = "loss") -> torch.Tensor:
    """Per-row CE or entropy through the vocab head, fp32, logits materialised."""
    check_criterion(criterion)
    stats = vocab_partial_stats(rows, weight, bias, targets, sumzexp=criterion == "entropy")
    return finish_token_scores(stats, criterion)


def gradient_norm_bounds_torch(rows, weight, bias, targets) -> torch.Tensor:
    """float32 [N]: ``||softmax(z) - onehot(target)||_2`` per row, the norm of the cross-entropy's
    gradient with respect to the logits (Katharopoulos & Fleuret 2018's bound on the per-sample
    gradient norm). ``sum p^2 - 2 p_target + 1`` cancels in float32 for a confident right prediction,
    so it is summed as ``sum_{v != target} p_v^2 + (sum_{v != target} p_v)^2``: every term positive.
    One pass over each chunk of logits (logits materialised a chunk at a time)."""
    check_head(rows, weight, bias)
    n, v = rows.shape[0], weight.shape[0]
    w = weight.float()
    b = None if bias is None else bias.float()
    out, chunk = [], _row_chunk(v, rows.device)
    for lo in range(0, n, chunk):
        z = torch.nn.functional.linear(rows[lo : lo + chunk].float(), w, b)
        e = z.sub_(z.amax(dim=1, keepdim=True)).exp_()  # exp(z - m)
        target = targets[lo : lo + e.shape[0]].long().clamp(0, v - 1)[:, None]
        e_target = torch.gather(e, 1, target).squeeze(1)
        e.scatter_(1, target, 0.0)  # the other ids only
        rest = e.sum(dim=1)
        s = rest + e_target
        out.append((torch.linalg.vecdot(e, e) + rest * rest).sqrt() / s)
    return torch.cat(out) if out else rows.new_zeros(0, dtype=torch.float32)


def packed_sequence_scores_torch(rows, weight, bias, targets, seq_index, num_seqs, criterion="loss"):
    return reduce_to_sequences(token_scores_torch(rows, weight, bias, targets, criterion), seq_index, num_seqs)


def select_topk_torch(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, largest first; non-finite scores rank below every
    finite one; ties go to the lower index (a stable descending sort)."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    k = check_k(k, scores.numel())
    key = scores if scores.dtype == torch.float64 else scores.float()
    key = torch.where(torch.isfinite(key), key, torch.full_like(key, float("-inf")))
    return torch.sort(key, descending=True, stable=True).indices[:k]
