"""The convergence rule of one task: early stopping's patience and min-delta on a validation metric.

An evaluation improves on the best value when it is better by more than ``min_delta`` (a tie, or a gain
of exactly ``min_delta``, does not improve). The first evaluation sets the best. After ``patience``
evaluations in a row without improvement the task has converged; its best point (value and step) is
the last improving evaluation."""
from __future__ import annotations

from typing import Any, Dict, Optional

from .config import TaskSpec


class ConvergenceRule:
    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.waited = 0
        self.converged_step: Optional[int] = None

    @property
    def converged(self) -> bool:
        return self.converged_step is not None

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.spec.mode == "max":
            return value > self.best + self.spec.min_delta
        return value < self.best - self.spec.min_delta

    def observe(self, step: int, value: float) -> str:
        """Record the evaluation after ``step`` optimizer steps: "improved", "waiting", "converged" (at
        this evaluation) or "done" (converged before; nothing changes)."""
        if self.converged:
            return "done"
        if self.improves(value):
            self.best, self.best_step, self.waited = float(value), int(step), 0
            return "improved"
        self.waited += 1
        if self.waited >= self.spec.patience:
            self.converged_step = int(step)
            return "converged"
        return "waiting"

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "waited": self.waited,
                "converged_step": self.converged_step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.waited, self.converged_step = state["waited"], state["converged_step"]
