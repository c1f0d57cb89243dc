"""PCGrad's gradient surgery (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning").

Each task's gradient on the shared parameters is projected, task by task in a random order, onto the
normal plane of every other task's gradient it conflicts with (negative inner product); the projected
gradients are summed. A parameter that only one task reaches (its head) gets that task's gradient as
it is. ``TaskGradients`` collects the per-task gradients (one backward per task) over the
micro-batches of an optimizer step, averages them over the data-parallel ranks, and writes the total
into the parameters' ``.grad``."""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch

Mean = Callable[[torch.Tensor], torch.Tensor]  # a tensor averaged over the data-parallel ranks


def draw_orders(tasks: int, generator: torch.Generator) -> List[List[int]]:
    """For each task i, the other tasks in a random order (one permutation per task, as Yu et al.)."""
    orders = []
    for i in range(tasks):
        others = [j for j in range(tasks) if j != i]
        orders.append([others[p] for p in torch.randperm(len(others), generator=generator).tolist()])
    return orders


def project_conflicting(grads: torch.Tensor, orders: Sequence[Sequence[int]]) -> torch.Tensor:
    """``grads`` [tasks, D]: sum over i of g_i, each projected in ``orders[i]``'s order: where
    ``g_i . g_j < 0``, ``g_i -= (g_i . g_j) / |g_j|^2 g_j`` (g_j the other task's own gradient)."""
    total = torch.zeros_like(grads[0])
    for i, order in enumerate(orders):
        g = grads[i].clone()
        for j in order:
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g -= dot / torch.dot(grads[j], grads[j]) * grads[j]
        total += g
    return total


class TaskGradients:
    """Per-task gradients of the parameters, summed over an optimizer step's micro-batches."""

    def __init__(self, tasks: Sequence[str]):
        self.tasks = tuple(tasks)
        self.grads: Dict[str, List[Optional[torch.Tensor]]] = {}

    def accumulate(self, losses: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor]) -> None:
        """One backward per task in ``losses`` (already scaled for gradient accumulation)."""
        present = [t for t in self.tasks if t in losses]
        for n, task in enumerate(present):
            grads = torch.autograd.grad(losses[task], params, retain_graph=n < len(present) - 1, allow_unused=True)
            held = self.grads.setdefault(task, [None] * len(params))
            for k, g in enumerate(grads):
                if g is not None:
                    held[k] = g if held[k] is None else held[k] + g

    def apply(self, params: Sequence[torch.Tensor], orders: Sequence[Sequence[int]], mean: Optional[Mean] = None) -> None:
        """Average over the ranks (``mean``), project the shared parameters' gradients (those that two
        or more tasks reach), and add the result to each parameter's ``.grad``; then forget them.
        ``orders`` index ``self.tasks``."""
        tasks = [t for t in self.tasks if t in self.grads]
        reached = [[k for k in range(len(params)) if self.grads[t][k] is not None] for t in tasks]
        if mean is not None and tasks:  # one collective: every task's gradients, flattened
            flat = mean(torch.cat([self.grads[t][k].reshape(-1) for t, ks in zip(tasks, reached) for k in ks]))
            offset = 0
            for t, ks in zip(tasks, reached):
                for k in ks:
                    size = self.grads[t][k].numel()
                    self.grads[t][k] = flat[offset:offset + size].view_as(params[k])
                    offset += size
        users = [[t for t in tasks if self.grads[t][k] is not None] for k in range(len(params))]
        shared = [k for k, u in enumerate(users) if len(u) > 1]
        if shared:
            rows = torch.stack([torch.cat([self._grad(t, k, params).reshape(-1) for k in shared]) for t in self.tasks])
            total = project_conflicting(rows, orders)
            offset = 0
            for k in shared:
                size = params[k].numel()
                self._add(params[k], total[offset:offset + size].view_as(params[k]))
                offset += size
        for k, u in enumerate(users):
            if len(u) == 1:
                self._add(params[k], self.grads[u[0]][k])
        self.grads = {}

    def _grad(self, task: str, k: int, params: Sequence[torch.Tensor]) -> torch.Tensor:
        g = self.grads.get(task, [None] * len(params))[k]
        return torch.zeros_like(params[k]) if g is None else g

    @staticmethod
    def _add(param: torch.Tensor, grad: torch.Tensor) -> None:
        grad = grad.to(param.dtype)
        param.grad = grad.clone() if param.grad is None else param.grad + grad
