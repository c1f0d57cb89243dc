"""The per-task validation metrics every front-end of asynchronous convergence produces: ``loss``
(mean cross-entropy over the task's labelled rows) and ``accuracy`` (share of them whose argmax is the
label). A row: an example of a sequence task, a position of a token task; label -100 is no label."""
from __future__ import annotations

from typing import Dict, Mapping

import torch
import torch.nn.functional as F

from .distillation import IGNORE_INDEX

METRICS = ("accuracy", "loss")


def example_statistics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example (the first dimension) [loss sum, correct, labelled rows], float64: summable across
    batches and ranks."""
    rows = labels.shape[0]
    flat_logits = logits.reshape(labels.numel(), -1).float()
    flat = labels.reshape(-1)
    valid = flat != IGNORE_INDEX
    loss = F.cross_entropy(flat_logits, flat.clamp_min(0), reduction="none") * valid
    correct = (flat_logits.argmax(-1) == flat) & valid
    per_row = torch.stack([loss.double(), correct.double(), valid.double()], -1)
    return per_row.reshape(rows, -1, 3).sum(1)


def metrics_from_sums(sums: Mapping[str, torch.Tensor]) -> Dict[str, Dict[str, float]]:
    """task -> [loss sum, correct, count] -> task -> {"loss": ..., "accuracy": ...} (NaN without rows)."""
    out = {}
    for task, (loss, correct, count) in ((t, s.tolist()) for t, s in sums.items()):
        out[task] = {"loss": loss / count if count else float("nan"),
                     "accuracy": correct / count if count else float("nan")}
    return out
