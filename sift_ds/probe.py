"""The early-exit fidelity probe: how well the layer-k scores rank sequences as the full model's
per-sequence loss does (the paper's Theorem 6.2 question, measured during training).

On a fixed probe batch: the Spearman rank correlation between the layer-k scores and the full-model
per-sequence masked-LM loss, and the overlap of their top halves (1 = the early exit keeps exactly
the sequences that the full loss would keep; 0.5 = chance). Rows with no labelled token are left out.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping

import torch

from .adapters import EarlyExitAdapter
from .config import SiftConfig
from .criteria import criterion_scores, early_exit_scores
from .selector import gather_scores


def ranks(values: torch.Tensor) -> torch.Tensor:
    """float64 ranks 0..n-1, ties given their average rank (as ``scipy.stats.rankdata`` - 1)."""
    order = torch.argsort(values, stable=True)
    sorted_vals = values[order]
    first = torch.ones_like(sorted_vals, dtype=torch.bool)
    first[1:] = sorted_vals[1:] != sorted_vals[:-1]
    group = torch.cumsum(first.long(), 0) - 1
    positions = torch.arange(values.numel(), dtype=torch.float64, device=values.device)
    count = torch.zeros(int(group[-1]) + 1 if values.numel() else 0, dtype=torch.float64, device=values.device)
    total = torch.zeros_like(count)
    count.index_add_(0, group, torch.ones_like(positions))
    total.index_add_(0, group, positions)
    out = torch.empty_like(positions)
    out[order] = (total / count)[group]
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (NaN when either is constant)."""
    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.pow(2).sum() * rb.pow(2).sum()).sqrt()
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def top_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.5) -> float:
    """|top-k(a) intersect top-k(b)| / k with k = round(fraction * n) (ties to the lower index)."""
    k = max(1, round(fraction * a.numel()))
    top_a = set(torch.topk(a.double(), k).indices.tolist())
    return len(top_a.intersection(torch.topk(b.double(), k).indices.tolist())) / k


def fidelity(adapter: EarlyExitAdapter, batch: Mapping[str, torch.Tensor], cfg: SiftConfig,
             labels_key: str = "labels", group=None) -> Dict[str, float]:
    """``probe/spearman`` and ``probe/top_half_overlap`` of the exit-``cfg.exit_layer`` scores
    (``cfg.criterion``) against the full model's per-sequence loss, over every rank's probe batch
    (a collective when a process group exists; every rank must call it with same-sized batches)."""
    # Every labelled position; a criterion's state does not move. A criterion that reads per-row
    # columns the probe batch has not names the criterion probed instead (``probe_as``).
    stand_in = cfg.criterion_class.probe_as
    probed = dataclasses.replace(cfg, criterion=stand_in, options=None) if stand_in else cfg
    early = criterion_scores(adapter, probed, batch, labels_key=labels_key, max_positions=0)
    full = early_exit_scores(adapter, batch, adapter.num_layers, "loss", cfg.kernel, labels_key=labels_key)
    early, full = gather_scores(early, group).cpu(), gather_scores(full, group).cpu()
    valid = torch.isfinite(early) & torch.isfinite(full)
    early, full = early[valid], full[valid]
    if early.numel() < 2:
        return {"probe/spearman": float("nan"), "probe/top_half_overlap": float("nan")}
    return {"probe/spearman": spearman(early, full), "probe/top_half_overlap": top_overlap(early, full)}
