"""Early-exit scoring: gross batch -> prefix forward (dropout off) -> the model's own MLM head on the
labelled positions only -> one float32 score per row (``sift_ds.kernels`` does the vocab part).

Tensor-parallel models are scored here too, through the adapter's optional hooks (see
``sift_ds.adapters``): with a ``vocab_group`` each rank scores its vocabulary shard (starting at id
``vocab_start``) and the partial softmax statistics are merged over the group
(``kernels.merge_vocab_stats_across``), so every rank of the group gets identical scores.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from .. import kernels
from ..adapters import EarlyExitAdapter, aligned_labels, early_exit_hidden
from ..zero import full_parameters


def position_subset(labels: torch.Tensor, max_positions: int, seed: int) -> torch.Tensor:
    """``labels`` with all but at most ``max_positions`` labelled positions per row set to the ignore
    index: a uniform random subset, the positions with the smallest of seeded keys (drawn on the CPU,
    the same on every device; no host sync)."""
    ignored = labels == kernels.IGNORE_INDEX
    keys = torch.rand(labels.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    keys = keys.to(labels.device, non_blocking=True).masked_fill(ignored, 2.0)
    chosen = keys.topk(min(max_positions, labels.shape[1]), dim=1, largest=False).indices
    keep = torch.zeros_like(ignored).scatter_(1, chosen, True) & ~ignored
    return torch.where(keep, labels, torch.full_like(labels, kernels.IGNORE_INDEX))


def vocab_group(adapter: EarlyExitAdapter):
    """The process group the adapter's vocabulary head is split over (its ``vocab_group`` hook), or
    None for a whole head (no hook, no process group, or a group of one rank)."""
    group = getattr(adapter, "vocab_group", None)
    if group is None or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return None
    return group


def vocab_size(adapter: EarlyExitAdapter) -> int:
    """The size of the whole vocabulary. ZeRO-3 partitioned weights report their full shape as
    ``ds_shape``; a vocabulary-parallel head holds ``V / group size`` rows per rank."""
    weight = adapter.vocab_projection()[0]
    group = vocab_group(adapter)
    return int(getattr(weight, "ds_shape", weight.shape)[0]) * (dist.get_world_size(group) if group is not None else 1)


def labelled_positions(adapter: EarlyExitAdapter, batch: Mapping[str, torch.Tensor], labels_key: str = "labels",
                       max_positions: int = 0, seed: int = 0, aligned: Optional[torch.Tensor] = None):
    """(flat position index, sequence index) of the scored tokens, computed where the batch lives: the
    labels other than -100 after the adapter's label alignment (``align_labels``: for a causal LM, the
    positions whose next token is labelled), or where its ``labelled_mask(batch)`` hook is non-zero;
    with ``max_positions`` > 0, at most that many per row (``position_subset``, seeded by ``seed``).

    The selection core calls this on the host copy of the batch, so the count needs no device sync.
    ``aligned``: the batch's labels after the adapter's alignment, when already computed.
    """
    labels = aligned_labels(adapter, batch[labels_key]) if aligned is None else aligned
    hook = getattr(adapter, "labelled_mask", None)
    mask = hook(batch) if hook is not None else None
    if max_positions:
        if mask is not None:
            labels, mask = labels.masked_fill(mask == 0, kernels.IGNORE_INDEX), None
        labels = position_subset(labels, max_positions, seed)
    return kernels.compact_labelled(labels, mask)


def check_labels(adapter: EarlyExitAdapter, aligned: torch.Tensor, positions) -> None:
    """ValueError for a scored label outside the model's vocabulary (on the host copy: no device sync).
    ``aligned``: the batch's labels after the adapter's alignment (``aligned_labels``); ``positions``:
    ``labelled_positions``."""
    targets = aligned.reshape(-1).index_select(0, positions[0])
    kernels.check_target_ids(targets, vocab_size(adapter))


def rows_at(adapter: EarlyExitAdapter, hidden: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """The hidden states at the flat ``[B*S]`` positions ``flat`` -> ``[N, H]``: the adapter's
    ``rows_at`` hook (other layouts, sequence parallelism), else from ``[B, S, H]``."""
    hook = getattr(adapter, "rows_at", None)
    if hook is not None:
        return hook(hidden, flat)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat)


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


@contextlib.contextmanager
def _head_inputs(adapter, batch, exit_layer: int, positions, labels_key: str, max_positions: int = 0, seed: int = 0,
                 aligned: Optional[torch.Tensor] = None):
    """(rows through the head transform [N, H], weight, bias, targets [N], sequence of each row [N]),
    with the pass's parameters gathered (ZeRO-3) and its dropout off while inside."""
    labels = aligned_labels(adapter, batch[labels_key]) if aligned is None else aligned
    flat, seq = positions if positions is not None else labelled_positions(adapter, batch, labels_key,
                                                                           max_positions, seed, labels)
    device = labels.device
    flat, seq = flat.to(device, non_blocking=True), seq.to(device, non_blocking=True)
    modules = adapter.selection_modules(exit_layer)
    with full_parameters(modules), eval_mode(modules):
        hidden = early_exit_hidden(adapter, batch, exit_layer)
        rows = adapter.head_transform(rows_at(adapter, hidden, flat))
        weight, bias = adapter.vocab_projection()
        yield rows, weight, bias, labels.reshape(-1).index_select(0, flat), seq


def _token_scores(adapter, rows, weight, bias, targets, criterion: str, backend: str, check_targets: bool):
    group = vocab_group(adapter)
    if group is None:
        return kernels.token_scores(rows, weight, bias, targets, criterion, backend, check_targets=check_targets)
    stats = kernels.vocab_shard_stats(rows, weight, bias, targets, getattr(adapter, "vocab_start", 0), backend)
    return kernels.finish_token_scores(kernels.merge_vocab_stats_across(stats, group), criterion)


@torch.no_grad()
def early_exit_scores(
    adapter: EarlyExitAdapter,
    batch: Mapping[str, torch.Tensor],
    exit_layer: int,
    criterion: str = "loss",
    backend: str = "auto",
    positions: Optional[tuple] = None,
    labels_key: str = "labels",
    check_targets: bool = True,
    max_positions: int = 0,
    seed: int = 0,
    aligned: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """float32 [B]: mean early-exit loss or entropy over each sequence's scored positions (``-inf``
    for a row with none): the labelled ones (for a causal LM, the positions whose next token is
    labelled), at most ``max_positions`` per row when > 0 (a subset seeded by ``seed``).
    ``exit_layer = L`` with ``"loss"`` is the full model's loss.

    ``positions`` may carry ``labelled_positions(adapter, batch, labels_key, max_positions, seed)``
    already computed on the host; ``check_targets=False`` when the labels were checked there too
    (``check_labels``), so that the scoring needs no host sync; ``aligned``: the labels after the
    adapter's alignment, on the batch's device, when already computed. With a vocabulary-parallel head
    this is a collective of its group.
    """
    num_seqs = batch[labels_key].shape[0]
    with _head_inputs(adapter, batch, exit_layer, positions, labels_key, max_positions, seed, aligned) as (
            rows, weight, bias, targets, seq):
        if vocab_group(adapter) is None:  # the fused path: one kernel from the rows to the sequence means
            return kernels.packed_sequence_scores(rows, weight, bias, targets, seq, num_seqs, criterion=criterion,
                                                  backend=backend, check_targets=check_targets)
        token = _token_scores(adapter, rows, weight, bias, targets, criterion, backend, check_targets)
    return kernels.reduce_to_sequences(token, seq, num_seqs)


# The per-token statistics ``early_exit_token_statistic`` computes: the kernels' criteria, and the
# gradient-norm bound of importance sampling (``kernels.token_gradient_norms``).
GRADIENT_NORM = "gradnorm"
STATISTICS = kernels.CRITERIA + (GRADIENT_NORM,)


@torch.no_grad()
def early_exit_token_statistic(adapter: EarlyExitAdapter, batch: Mapping[str, torch.Tensor], exit_layer: int,
                               statistic: str = "loss", backend: str = "auto", positions: Optional[tuple] = None,
                               labels_key: str = "labels", check_targets: bool = True, max_positions: int = 0,
                               seed: int = 0, aligned: Optional[torch.Tensor] = None):
    """(float32 [N] the per-token ``statistic`` (one of ``STATISTICS``) at the scored positions after
    ``exit_layer`` layers, int64 [N] their target ids, int64 [N] the row of each), in flat position
    order; the arguments are ``early_exit_scores``'s. No host sync with ``check_targets=False``."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    with _head_inputs(adapter, batch, exit_layer, positions, labels_key, max_positions, seed, aligned) as (
            rows, weight, bias, targets, seq):
        if statistic != GRADIENT_NORM:
            return _token_scores(adapter, rows, weight, bias, targets, statistic, backend, check_targets), targets, seq
        if vocab_group(adapter) is not None:
            raise ValueError("the gradient-norm statistic (sift.criterion='importance') needs the whole vocabulary "
                             "head on each rank: a vocabulary-parallel head is not supported")
        return kernels.token_gradient_norms(rows, weight, bias, targets, check_targets=check_targets), targets, seq


def early_exit_token_scores(adapter: EarlyExitAdapter, batch: Mapping[str, torch.Tensor], exit_layer: int,
                            criterion: str = "loss", backend: str = "auto"):
    """(float32 [N] per-token CE or entropy at the labelled positions after ``exit_layer`` layers,
    int64 [N] the row of each token), in flat position order: what ``early_exit_scores`` averages."""
    token, _, seq = early_exit_token_statistic(adapter, batch, exit_layer, criterion, backend)
    return token, seq
