"""Early-exit scoring: gross batch -> prefix forward (dropout off) -> the model's own MLM head on the
labelled positions only -> one float32 score per row (``sift_ds.kernels`` does the vocab part)."""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Mapping, Optional

import torch
from torch import nn

from . import kernels
from .adapters import EarlyExitAdapter, aligned_labels, early_exit_hidden
from .zero import full_parameters


def labelled_positions(labels: torch.Tensor, adapter: Optional[EarlyExitAdapter] = None, max_positions: int = 0,
                       seed: int = 0):
    """(flat position index, sequence index) of the scored positions, computed where ``labels`` lives:
    the labelled ones after the adapter's label alignment (``align_labels``), and with ``max_positions``
    > 0 at most that many per row (``position_subset``).

    The engine calls this on the host copy of the labels, so the count needs no device sync.
    """
    targets = labels if adapter is None else aligned_labels(adapter, labels)
    return kernels.compact_labelled(position_subset(targets, max_positions, seed) if max_positions else targets)


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


def check_labels(adapter: EarlyExitAdapter, labels: torch.Tensor) -> None:
    """ValueError for labels outside the model's vocabulary other than the ignore index (on the
    host copy: no device sync). ZeRO-3 partitioned weights report their full shape as ``ds_shape``."""
    weight = adapter.vocab_projection()[0]
    kernels.check_target_ids(labels, int(getattr(weight, "ds_shape", weight.shape)[0]))


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
) -> torch.Tensor:
    """float32 [B]: mean early-exit loss or entropy over each sequence's scored positions (``-inf``
    for a row with none): the labelled ones (for a causal LM, the positions whose next token is
    labelled), at most ``max_positions`` per row when > 0 (a subset seeded by ``seed``).
    ``exit_layer = L`` with ``"loss"`` is the full model's loss.

    ``positions`` may carry ``labelled_positions(labels, adapter, max_positions, seed)`` already
    computed on the host; ``check_targets=False`` when the labels were checked there too
    (``check_labels``), so that the scoring needs no host sync.
    """
    raw = batch[labels_key]
    labels = aligned_labels(adapter, raw)
    flat, seq = positions if positions is not None else labelled_positions(raw, adapter, max_positions, seed)
    device = labels.device
    flat, seq = flat.to(device, non_blocking=True), seq.to(device, non_blocking=True)
    modules = adapter.selection_modules(exit_layer)
    with full_parameters(modules), eval_mode(modules):
        hidden = early_exit_hidden(adapter, batch, exit_layer)
        rows = adapter.head_transform(hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat))
        weight, bias = adapter.vocab_projection()
        targets = labels.reshape(-1).index_select(0, flat)
        return kernels.packed_sequence_scores(
            rows, weight, bias, targets, seq, labels.shape[0], criterion=criterion, backend=backend,
            check_targets=check_targets,
        )
