"""The log window of the pretraining loop: what is summed between two log records (loss, steps,
FLOPs, wall time without evaluation and checkpoints, time waiting for data; the engine's telemetry
window holds the ``sift/*`` pairs), carried across a stop in the checkpoint with those pairs, and the
shares of the window's time spent outside the training step."""
from __future__ import annotations

import time
from typing import Dict, Optional

import torch
import torch.distributed as dist


class LogWindow:
    """Loss sum and wall time between two log records (evaluation and checkpoint time excluded)."""

    def __init__(self, device):
        self.start = time.perf_counter()
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.micro_steps = 0
        self.steps = 0
        self.flops = 0.0
        self.paused = 0.0
        self.data_s = 0.0  # waiting for the loader's gross batches (read, masked; prefetched while stepping)
        self.sift_pairs: Dict[str, list] = {}  # a restored window's sift/* pairs, for the engine's telemetry

    def state(self, sift_pairs: Optional[dict] = None) -> dict:
        """The partial sums, for a checkpoint: every rank's loss sum and ``sift_pairs`` (this rank's
        telemetry window, ``SelectionTelemetry.state``; a collective), steps, FLOPs, seconds."""
        mine = (self.loss.item(), sift_pairs or {})
        everyone = [mine]
        if dist.is_initialized() and dist.get_world_size() > 1:
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
        return {"losses": [loss for loss, _ in everyone], "sift_pairs": [pairs for _, pairs in everyone],
                "micro_steps": self.micro_steps, "steps": self.steps, "flops": self.flops, "seconds": self.seconds(),
                "data_s": self.data_s}

    @classmethod
    def restored(cls, device, state: dict) -> "LogWindow":
        """The window a checkpoint stored; this rank's own loss sum and ``sift_pairs`` when the world size
        is the same (the record is then bitwise the uninterrupted one), else the totals on rank 0."""
        window = cls(device)
        losses, pairs = state["losses"], state.get("sift_pairs") or [{} for _ in state["losses"]]
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        same = len(losses) == world
        window.loss.fill_(losses[rank] if same else (sum(losses) if rank == 0 else 0.0))
        window.micro_steps = state["micro_steps"] if same else (state["micro_steps"] * len(losses) if rank == 0 else 0)
        window.sift_pairs = pairs[rank] if same else (_summed(pairs) if rank == 0 else {})
        window.steps, window.flops, window.data_s = state["steps"], state["flops"], state.get("data_s", 0.0)
        window.start -= state["seconds"]
        return window

    def add_loss(self, loss: torch.Tensor) -> None:
        self.loss += loss.detach().to(torch.float64)
        self.micro_steps += 1

    def mean_loss(self) -> float:
        """The window's mean loss over all ranks (a collective)."""
        total = torch.stack([self.loss, torch.tensor(float(self.micro_steps), dtype=torch.float64,
                                                     device=self.loss.device)])
        if dist.is_initialized():
            dist.all_reduce(total)
        loss, steps = total.tolist()
        return loss / max(steps, 1.0)

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused


def _summed(pairs: list) -> dict:
    """Every rank's ``[sum, count]`` pairs added up, key by key."""
    out: Dict[str, list] = {}
    for ranks_pairs in pairs:
        for key, (total, count) in ranks_pairs.items():
            out[key] = [out.get(key, [0.0, 0.0])[0] + total, out.get(key, [0.0, 0.0])[1] + count]
    return out


def overhead(window: "LogWindow", seconds: float, selection_share: Optional[float], engine) -> Dict[str, float]:
    """What the loop spent outside the training step, as shares of the window's wall time:
    ``data/wait_share`` (waiting for gross batches) and ``sift/overhead_share``, all that SIFT adds
    to a vanilla step: the selection (its measured share of the step) plus the part of the data wait
    spent on the rows it drops (1 - micro / gross of the rows read)."""
    if seconds <= 0:
        return {}
    out = {"data/wait_share": window.data_s / seconds}
    if engine.sift_config.enabled:
        dropped = 1.0 - engine.micro_batch_size / engine.gross_batch_size
        stepping = seconds - window.data_s
        out["sift/overhead_share"] = ((selection_share or 0.0) * stepping + dropped * window.data_s) / seconds
    return out
