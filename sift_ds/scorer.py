"""Early-exit scoring: gross batch -> prefix forward -> head on labelled positions -> one score per row."""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from . import kernels
from .adapters import EarlyExitAdapter, early_exit_hidden
from .zero import eval_mode, full_parameters


def labelled_positions(labels: torch.Tensor):
    """(flat position index, sequence index) of the labelled tokens, computed where ``labels`` lives.

    The engine calls this on the host copy of the labels, so the count needs no device sync.
    """
    return kernels.compact_labelled(labels)


@torch.no_grad()
def early_exit_scores(
    adapter: EarlyExitAdapter,
    batch: Mapping[str, torch.Tensor],
    exit_layer: int,
    criterion: str = "loss",
    backend: str = "auto",
    positions: Optional[tuple] = None,
    labels_key: str = "labels",
) -> torch.Tensor:
    """float32 [B]: mean early-exit MLM loss or entropy over each sequence's labelled positions.

    Runs embeddings + the first ``exit_layer`` layers with dropout off, then the model's own MLM head
    (transform + tied decoder + bias) on the labelled positions only. ``positions`` may carry the
    output of ``labelled_positions`` already computed (on the host); otherwise it is computed here.
    """
    labels = batch[labels_key]
    flat, seq = positions if positions is not None else labelled_positions(labels)
    device = labels.device
    flat, seq = flat.to(device, non_blocking=True), seq.to(device, non_blocking=True)
    modules = adapter.selection_modules(exit_layer)
    with full_parameters(modules), eval_mode(modules):
        hidden = early_exit_hidden(adapter, batch, exit_layer)
        rows = adapter.head_transform(hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat))
        weight, bias = adapter.vocab_projection()
        targets = labels.reshape(-1).index_select(0, flat)
        return kernels.packed_sequence_scores(
            rows, weight, bias, targets, seq, labels.shape[0], criterion=criterion, backend=backend
        )
