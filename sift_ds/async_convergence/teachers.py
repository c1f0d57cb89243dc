"""Where a converged task's teacher outputs come from.

``FrozenTeachers``: frozen copies of the model, one per distinct best step, run beside the training
forward (no gradient, eval mode). ``build_logit_cache``: such a copy run once over the training set; the
task's logits are kept on the CPU per example index and looked up by it (``lookup``). The model's own
weights at each retained step are kept as CPU state dicts (``snapshots``), so that a checkpoint can
hold them and a resumed run rebuild the same teachers."""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Tuple

import torch
from torch import nn

Weights = Dict[str, torch.Tensor]
# (frozen module, model inputs) -> {task: logits}
LogitsFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]
# weights -> a frozen module holding them, on the training device
CopyFn = Callable[[Weights], nn.Module]


def cpu_weights(module: nn.Module) -> Weights:
    """A CPU copy of ``module``'s state dict: the model at one evaluation."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class FrozenTeachers:
    """Frozen copies keyed by the step whose weights they hold, built on first use."""

    def __init__(self, copy_model: CopyFn, model_logits: LogitsFn):
        self.copy_model, self.model_logits = copy_model, model_logits
        self.modules: Dict[int, nn.Module] = {}
        self._last = None  # (step, inputs, outputs): tasks sharing a teacher share its forward on a batch

    def module(self, step: int, weights: Weights) -> nn.Module:
        if step not in self.modules:
            self.modules[step] = freeze(self.copy_model(weights))
        return self.modules[step]

    def logits(self, step: int, weights: Weights, task: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self._last is None or self._last[0] != step or self._last[1] is not inputs:
            with torch.no_grad():
                self._last = (step, inputs, self.model_logits(self.module(step, weights), inputs))
        return self._last[2][task].detach()

    def keep_only(self, steps: Iterable[int]) -> None:
        keep = set(steps)
        self._last = None
        for step in [s for s in self.modules if s not in keep]:
            del self.modules[step]


def build_logit_cache(module: nn.Module, model_logits: LogitsFn, tasks: List[str],
                      batches: Iterable[Tuple[Mapping[str, torch.Tensor], torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """One pass of the frozen ``module`` over ``batches`` ((inputs, example indices) pairs): per task a
    CPU float32 tensor [max index + 1, ...] of its logits by example index."""
    rows: Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]] = {t: [] for t in tasks}
    with torch.no_grad():
        for inputs, index in batches:
            out = model_logits(module, inputs)
            for task in tasks:
                rows[task].append((index.reshape(-1).cpu().long(), out[task].detach().float().cpu()))
    caches = {}
    for task, parts in rows.items():
        if not parts:
            raise ValueError("async_convergence: teacher 'cached' needs the training set, and it gave no batch")
        size = int(max(i.max() for i, _ in parts)) + 1
        cache = torch.zeros((size, *parts[0][1].shape[1:]), dtype=torch.float32)
        for index, logits in parts:
            cache[index] = logits
        caches[task] = cache
    return caches


def lookup(cache: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The cached logits of the examples ``index``, on ``like``'s device and dtype."""
    if index is None:
        raise ValueError("async_convergence: teacher 'cached' needs each training batch's example indices "
                         "(the index_key column)")
    return cache[index.reshape(-1).cpu().long()].to(device=like.device, dtype=like.dtype)
