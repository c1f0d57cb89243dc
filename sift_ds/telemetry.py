"""Selection telemetry: the ``sift/*`` statistics of a selection as ``[sum, count]`` pairs (device
tensors: recording them costs no host sync), summed over a window of steps and, where asked, over
the data-parallel ranks, and read as means (``sum / count``, NaN where nothing was counted) only
when a front-end logs them; plus the step timer (CUDA events on the GPU, so timing adds no sync).

Every front-end reports the same keys from the same pairs: the DeepSpeed engine the last step of
its rank, the HF Trainer the logging window of all ranks, Megatron the pairs themselves (its loss
dict reduction divides sum by count).
"""
from __future__ import annotations

import time
from typing import Dict, List

import torch
import torch.distributed as dist

SCORE_KEYS = ("sift/score_kept_mean", "sift/score_dropped_mean", "sift/nonfinite_scores")


def selection_stats(scores: torch.Tensor, kept: torch.Tensor, by_score: bool, keep_ratio: float) -> Dict[str, torch.Tensor]:
    """float32 ``[sum, count]`` pairs of one selection on this rank: ``scores`` [gross] (NaN when not
    scored), ``kept`` bool [gross] (which of this rank's rows are kept, by any rank)."""
    scores = scores.float()
    kept = kept.to(scores.device)
    finite = torch.isfinite(scores)

    def value(v):  # Python numbers become fills on the device, not host-to-device copies (no sync)
        return v.float().reshape(()) if torch.is_tensor(v) else scores.new_full((), float(v))

    def pair(total, count):
        return torch.stack([value(total), value(count)])

    def masked(mask):
        return pair(scores.masked_fill(~mask, 0.0).sum(), mask.sum())

    return {
        "sift/score_kept_mean": masked(kept & finite),
        "sift/score_dropped_mean": masked(~kept & finite),
        "sift/nonfinite_scores": pair((~finite).sum() if by_score else 0.0, 1),
        "sift/kept_fraction": pair(kept.sum(), kept.numel()),
        "sift/warmup": pair(0.0 if by_score else 1.0, 1),
        "sift/keep_ratio": pair(float(keep_ratio), 1),
    }


class StepTimer:
    """Wall-clock marks; on CUDA, events that are only synchronised when the time is read."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start


class SelectionTelemetry:
    """The statistics of a window of steps: ``add`` each selection's pairs and ``add_step`` its
    timer marks (start, selection done, step done); ``means`` reads them; ``clear`` starts over."""

    def __init__(self, device: torch.device):
        self.timer = StepTimer(device)
        self.clear()

    def clear(self) -> None:
        self.pairs: Dict[str, torch.Tensor] = {}
        self.marks: List[tuple] = []

    def add(self, pairs: Dict[str, torch.Tensor]) -> None:
        for key, value in pairs.items():
            self.pairs[key] = self.pairs[key] + value if key in self.pairs else value.clone()

    def add_step(self, t0, t1, t2) -> None:
        self.marks.append((t0, t1, t2))

    def means(self, group=None, reduce: bool = False) -> Dict[str, float]:
        """Host values of the window (one read); ``reduce``: summed over the ranks of ``group`` first
        (a collective: every rank calls it). ``sift/selection_share`` is the selection's share of the
        steps' wall-clock time."""
        if not self.pairs:
            return {}
        keys = sorted(self.pairs)
        rows = [self.pairs[k] for k in keys]
        if self.marks:
            select_s = sum(self.timer.seconds(t0, t1) for t0, t1, _ in self.marks)
            step_s = sum(self.timer.seconds(t0, t2) for t0, _, t2 in self.marks)
            device = rows[0].device
            keys += ["sift/selection_time_s", "sift/selection_share"]
            rows += [torch.tensor([select_s, len(self.marks)], device=device),
                     torch.tensor([select_s, step_s], device=device)]
        stacked = torch.stack(rows).float()
        if reduce and dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(stacked, group=group)
        return {k: (s / c if c > 0 else float("nan")) for k, (s, c) in zip(keys, stacked.tolist())}

