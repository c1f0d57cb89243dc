"""``AsyncConvergence``: asynchronous convergence in multi-task learning via knowledge distillation
from converged tasks (Lu et al., 2022), independent of any front-end.

The front-end calls ``observe(step, metrics, weights)`` after each evaluation and ``loss(step, ...)``
for each training batch. A task whose metric has converged (``ConvergenceRule``) switches from its
labels to distillation against the model's outputs at its best evaluation, while the other tasks keep
learning. ``state_dict()`` holds everything a resumed run needs to continue exactly: the rules, the
weights at each step a teacher may still need, and the cached logits."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .config import AsyncConvergenceConfig, from_dict
from .convergence import ConvergenceRule
from .distillation import IGNORE_INDEX, distill_share, kd_loss, label_loss
from .teachers import CopyFn, FrozenTeachers, LogitsFn, Weights, build_logit_cache, lookup

Batches = Callable[[], Iterable[Tuple[Mapping[str, torch.Tensor], torch.Tensor]]]


class AsyncConvergence:
    """``model_logits(module, inputs)`` -> {task: logits}; ``copy_model(weights)`` -> a module with those
    weights on the training device; ``training_batches()`` (teacher "cached" only) -> (inputs, example
    indices) pairs over the training set."""

    def __init__(self, config: Any, model_logits: LogitsFn, copy_model: CopyFn,
                 training_batches: Optional[Batches] = None):
        self.config: AsyncConvergenceConfig = from_dict(config)
        self.rules = {spec.name: ConvergenceRule(spec) for spec in self.config.tasks}
        self.model_logits, self.copy_model = model_logits, copy_model
        self.training_batches = training_batches
        self.frozen = FrozenTeachers(copy_model, model_logits)
        self.snapshots: Dict[int, Weights] = {}
        self.caches: Dict[str, torch.Tensor] = {}

    # ---- evaluation side ----
    def observe(self, step: int, metrics: Mapping[str, Mapping[str, float]],
                weights: Callable[[], Weights]) -> List[str]:
        """Feed the evaluation after ``step`` optimizer steps (``metrics``: task -> metric -> value);
        ``weights()`` gives the model's current weights (called only when a task improves). Returns the
        tasks that converged at this evaluation, whose teachers are then ready."""
        converged = []
        for name, rule in self.rules.items():
            outcome = rule.observe(step, float(metrics[name][rule.spec.metric]))
            if outcome == "improved" and step not in self.snapshots:
                self.snapshots[step] = weights()
            elif outcome == "converged":
                converged.append(name)
        if converged and self.config.teacher == "cached":
            self._cache(converged)
        self._prune()
        return converged

    def _cache(self, tasks: List[str]) -> None:
        if self.training_batches is None:
            raise ValueError("async_convergence: teacher 'cached' needs the front-end's training batches")
        for step in sorted({self.rules[t].best_step for t in tasks}):
            group = [t for t in tasks if self.rules[t].best_step == step]
            module = FrozenTeachers(self.copy_model, self.model_logits).module(step, self.snapshots[step])
            self.caches.update(build_logit_cache(module, self.model_logits, group, self.training_batches()))

    def _needed_steps(self) -> set:
        """Steps whose weights are still needed: each unconverged task's best step, and each converged
        task's with the frozen teacher."""
        return {r.best_step for r in self.rules.values()
                if r.best_step is not None and (not r.converged or self.config.teacher == "frozen")}

    def _prune(self) -> None:
        needed = self._needed_steps()
        for step in [s for s in self.snapshots if s not in needed]:
            del self.snapshots[step]
        self.frozen.keep_only(needed)

    # ---- training side ----
    def share(self, task: str, step: int) -> float:
        rule = self.rules.get(task)
        return 0.0 if rule is None else distill_share(step, rule.converged_step, rule.spec.blend_steps)

    def teacher_logits(self, task: str, inputs: Mapping[str, torch.Tensor], like: torch.Tensor,
                       index: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.config.teacher == "cached":
            return lookup(self.caches[task], index, like)
        step = self.rules[task].best_step
        return self.frozen.logits(step, self.snapshots[step], task, inputs).to(like.dtype)

    def task_loss(self, task: str, step: int, logits: torch.Tensor, labels: torch.Tensor,
                  inputs: Mapping[str, torch.Tensor], index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The task's loss at the step after ``step`` optimizer steps: its label loss, then (converged)
        ``kd_weight`` x KD on the rows it labels, blended in over ``blend_steps``. Unweighted."""
        share = self.share(task, step)
        own = label_loss(logits, labels) if share < 1 else None
        if share == 0:
            return own
        rows = labels != IGNORE_INDEX
        teacher = self.teacher_logits(task, inputs, logits, index)
        spec = self.rules[task].spec
        kd = spec.kd_weight * kd_loss(logits[rows], teacher[rows], spec.temperature)
        return kd if own is None else (1 - share) * own + share * kd

    def loss(self, step: int, logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
             inputs: Mapping[str, torch.Tensor], index: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The weighted sum over every task in ``labels`` (an unwatched task: its label loss, weight 1)
        and each task's unweighted loss."""
        per_task = {t: self.task_loss(t, step, logits[t], labels[t], inputs, index) for t in labels}
        weight = {t: self.rules[t].spec.loss_weight if t in self.rules else 1.0 for t in per_task}
        return sum(weight[t] * per_task[t] for t in per_task), per_task

    # ---- telemetry and checkpoints ----
    def telemetry(self, step: int) -> Dict[str, Dict[str, Any]]:
        """Per task: state "training" or "distilling" (converged at ``converged_step``; ``distill_share``
        below 1 while blending), the best metric value and its step."""
        out = {}
        for name, rule in self.rules.items():
            out[name] = {"state": "distilling" if rule.converged else "training",
                         "converged_step": rule.converged_step, "best": rule.best, "best_step": rule.best_step,
                         "distill_share": self.share(name, step)}
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"teacher": self.config.teacher, "tasks": {n: r.state_dict() for n, r in self.rules.items()},
                "snapshots": dict(self.snapshots), "caches": dict(self.caches)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["teacher"] != self.config.teacher or set(state["tasks"]) != set(self.rules):
            raise ValueError(f"async_convergence: the checkpoint was made with teacher {state['teacher']!r} and tasks "
                             f"{sorted(state['tasks'])}, this run has {self.config.teacher!r} and {sorted(self.rules)}")
        for name, rule in self.rules.items():
            rule.load_state_dict(state["tasks"][name])
        self.snapshots, self.caches = dict(state["snapshots"]), dict(state["caches"])
        self.frozen.keep_only(())
