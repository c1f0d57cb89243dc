"""The log window of the pretraining loop: what is summed between two log records (loss, steps,
FLOPs, wall time without evaluation and checkpoints, time waiting for data), carried across a stop
in the checkpoint, and the shares of the window's time spent outside the training step."""
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
        self.scores = torch.zeros(2, dtype=torch.float64, device=device)  # [non-finite scores, rows scored]
        self.nonfinite_share = 0.0  # of the rows scored in the window, all ranks (set by mean_loss)

    def state(self) -> dict:
        """The partial sums, for a checkpoint: every rank's loss sum (a collective), steps, FLOPs, seconds."""
        mine = self.loss.item()
        losses = [mine]
        if dist.is_initialized() and dist.get_world_size() > 1:
            losses = [None] * dist.get_world_size()
            dist.all_gather_object(losses, mine)
        return {"losses": losses, "micro_steps": self.micro_steps, "steps": self.steps, "flops": self.flops,
                "seconds": self.seconds(), "data_s": self.data_s}

    @classmethod
    def restored(cls, device, state: dict) -> "LogWindow":
        """The window a checkpoint stored; this rank's own loss sum when the world size is the same (the
        record is then bitwise the uninterrupted one), else the total on rank 0."""
        window = cls(device)
        losses = state["losses"]
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        same = len(losses) == world
        window.loss.fill_(losses[rank] if same else (sum(losses) if rank == 0 else 0.0))
        window.micro_steps = state["micro_steps"] if same else (state["micro_steps"] * len(losses) if rank == 0 else 0)
        window.steps, window.flops, window.data_s = state["steps"], state["flops"], state.get("data_s", 0.0)
        window.start -= state["seconds"]
        return window

    def add_loss(self, loss: torch.Tensor) -> None:
        self.loss += loss.detach().to(torch.float64)
        self.micro_steps += 1

    def add_scores(self, pairs: Dict[str, torch.Tensor]) -> None:
        """A selection's non-finite scores and rows scored, from its ``sift/*`` pairs (no host sync)."""
        nonfinite, warmup, kept = (pairs.get(k) for k in ("sift/nonfinite_scores", "sift/warmup", "sift/kept_fraction"))
        if nonfinite is not None and warmup is not None and kept is not None:
            self.scores += torch.stack([nonfinite[0], kept[1] * (1 - warmup[0])]).to(self.scores)

    def mean_loss(self) -> float:
        """The window's mean loss over all ranks (a collective); also sets ``nonfinite_share``."""
        total = torch.cat([torch.stack([self.loss, torch.tensor(float(self.micro_steps), dtype=torch.float64,
                                                                device=self.loss.device)]), self.scores])
        if dist.is_initialized():
            dist.all_reduce(total)
        loss, steps, nonfinite, scored = total.tolist()
        self.nonfinite_share = nonfinite / scored if scored > 0 else 0.0
        return loss / max(steps, 1.0)

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused


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
