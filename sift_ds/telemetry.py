"""Selection telemetry: the step timer (CUDA events on the GPU, so timing adds no host sync) and the
``sift/*`` statistics of the last step, converted to host values only when they are read."""
from __future__ import annotations

import time
from typing import Dict, Optional

import torch


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
    """Device tensors of the last selection (``record``) and of the last step (``finish_step``)."""

    def __init__(self, device: torch.device):
        self.timer = StepTimer(device)
        self.pending: Optional[dict] = None  # the last select
        self.last: Optional[dict] = None  # the last train_step, with its timings

    def record(self, scores: torch.Tensor, kept: torch.Tensor, by_score: bool, keep_ratio: float) -> None:
        """``kept``: indices or a bool mask over this rank's gross batch."""
        if kept.dtype != torch.bool:
            mask = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
            mask[kept] = True
            kept = mask
        self.pending = {"scores": scores, "kept": kept, "by_score": by_score, "keep_ratio": keep_ratio}

    def finish_step(self, t0, t1, t2) -> None:
        self.last = dict(self.pending, times=(t0, t1, t2))

    def stats(self) -> Dict[str, float]:
        if self.last is None:
            return {}
        last = self.last
        scores, kept = last["scores"].float(), last["kept"]
        finite = torch.isfinite(scores)
        t0, t1, t2 = last["times"]
        select_s, step_s = self.timer.seconds(t0, t1), self.timer.seconds(t0, t2)
        return {
            "sift/score_kept_mean": _masked_mean(scores, kept & finite),
            "sift/score_dropped_mean": _masked_mean(scores, ~kept & finite),
            "sift/kept_fraction": kept.float().mean().item(),
            "sift/nonfinite_scores": float((~finite).sum().item()) if last["by_score"] else 0.0,
            "sift/selection_time_s": select_s,
            "sift/selection_share": select_s / step_s if step_s > 0 else 0.0,
            "sift/warmup": float(not last["by_score"]),
            "sift/keep_ratio": last["keep_ratio"],
        }


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    n = mask.sum()
    return (values.masked_fill(~mask, 0.0).sum() / n).item() if n.item() > 0 else float("nan")
