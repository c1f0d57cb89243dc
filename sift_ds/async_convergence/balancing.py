"""Loss-balancing baselines for multi-task training, beside asynchronous convergence: the methods it
was compared with. ``uniform`` (the default), ``uncertainty`` (Kendall, Gal & Cipolla, 2018), ``dwa``
(dynamic weight averaging, Liu, Johns & Davison, 2019) and ``pcgrad`` (Yu et al., 2020).

Usage: pass ``balancing=`` to ``AsyncConvergenceTrainer``, e.g.
``AsyncConvergenceTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
balancing={"method": "dwa", "temperature": 2.0, "window": "epoch"})``. Leave ``async_convergence`` out
to train every task on its labels with no task watched and none distilled (a baseline arm); give both
to balance the losses of a run that also distils its converged tasks. The settings are ``method`` and,
for ``dwa``, ``temperature`` (> 0, default 2) and ``window`` (``"epoch"`` or a number of optimizer
steps); for ``pcgrad``, ``seed`` (the task order's seed, default the Trainer's ``seed``). Each
training log carries ``<task>_weight``, the weight the next step gives the task's loss, and the state
(learned log-variances, loss windows, the order's random state) is in every checkpoint.

In the library, ``build_balancer(settings, tasks, static_weights)`` gives a ``Balancer``:
``combine(losses)`` is the total loss to backward, ``observe(losses)`` feeds each training micro-batch's
task losses, ``step_end(step, epoch_ended, reduce)`` follows each optimizer step, ``parameters()`` are
to be trained with the model, ``task_weights()`` are the current weights, and ``state_dict()`` /
``load_state_dict()`` resume it exactly. PCGrad's gradient surgery is in ``balancing_pcgrad``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .balancing_pcgrad import TaskGradients, draw_orders
from .config import AsyncConvergenceError, _number

SECTION = "balancing"
METHODS = ("uniform", "uncertainty", "dwa", "pcgrad")
KEYS = {"uniform": (), "uncertainty": (), "dwa": ("temperature", "window"), "pcgrad": ("seed",)}
Reduce = Callable[[torch.Tensor], torch.Tensor]  # a tensor summed over the data-parallel ranks


@dataclass(frozen=True)
class BalancingConfig:
    """``method`` and its settings: ``temperature`` and ``window`` (dwa), ``seed`` (pcgrad; None: the
    front-end's seed)."""
    method: str = "uniform"
    temperature: float = 2.0
    window: Union[str, int] = "epoch"
    seed: Optional[int] = None


def balancing_from_dict(values: Any) -> BalancingConfig:
    """``{"method": ..., <its settings>}``; None is ``uniform``; a ``BalancingConfig`` passes through."""
    if values is None:
        return BalancingConfig()
    if isinstance(values, BalancingConfig):
        return values
    if not isinstance(values, Mapping):
        raise AsyncConvergenceError(f"{SECTION} must be an object such as {{\"method\": \"dwa\"}}, got {values!r}")
    method = values.get("method", "uniform")
    if method not in METHODS:
        raise AsyncConvergenceError(f"{SECTION}: method must be one of {', '.join(METHODS)}, got {method!r}")
    known = ("method",) + KEYS[method]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise AsyncConvergenceError(f"{SECTION}: {unknown[0]}: unknown key for method {method!r} "
                                    f"(known: {', '.join(known)})")
    config = BalancingConfig(**values)
    _number("temperature", config.temperature, float, 0, strict=True, section=SECTION)
    if config.window != "epoch":
        try:
            _number("window", config.window, int, 1, section=SECTION)
        except AsyncConvergenceError:
            raise AsyncConvergenceError(f"{SECTION}: window must be 'epoch' or a number of steps >= 1, "
                                        f"got {config.window!r}") from None
    if config.seed is not None:
        _number("seed", config.seed, int, 0, section=SECTION)
    return config


class Balancer:
    """``uniform``: the sum of the task losses, each times its static weight (its ``loss_weight``)."""
    method = "uniform"

    def __init__(self, config: BalancingConfig, tasks: Sequence[str], static: Optional[Mapping[str, float]] = None):
        self.config, self.tasks = config, tuple(tasks)
        self.static = {t: float((static or {}).get(t, 1.0)) for t in self.tasks}

    def parameters(self) -> List[nn.Parameter]:
        return []

    def dynamic_weights(self) -> List[float]:
        return [1.0] * len(self.tasks)

    def task_weights(self) -> Dict[str, float]:
        return {t: self.static[t] * w for t, w in zip(self.tasks, self.dynamic_weights())}

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.static[t] * losses[t] for t in losses)

    def observe(self, losses: Mapping[str, torch.Tensor]) -> None:
        """A training micro-batch's task losses (unweighted)."""

    def step_end(self, step: int, epoch_ended: bool, reduce: Reduce) -> None:
        """After ``step`` optimizer steps; ``epoch_ended``: that step ended an epoch."""

    def state_dict(self) -> Dict[str, Any]:
        return {"method": self.method, "tasks": list(self.tasks)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["method"] != self.method or list(state["tasks"]) != list(self.tasks):
            raise AsyncConvergenceError(f"{SECTION}: the checkpoint was made with method {state['method']!r} over tasks "
                                        f"{list(state['tasks'])}, this run has {self.method!r} over {list(self.tasks)}")


class UncertaintyWeighting(Balancer):
    """Kendall et al.'s homoscedastic uncertainty weighting: ``sum_t exp(-s_t) * c_t * L_t + s_t``, with
    ``s_t = log sigma_t^2`` learned (initially 0) and ``c_t`` the static weight. The weight
    ``exp(-s_t)`` settles where ``exp(-s_t) c_t L_t = 1``."""
    method = "uncertainty"

    def __init__(self, config, tasks, static=None, device=None, dtype=torch.float32):
        super().__init__(config, tasks, static)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks), device=device, dtype=dtype))

    def parameters(self) -> List[nn.Parameter]:
        return [self.log_vars]

    def dynamic_weights(self) -> List[float]:
        return torch.exp(-self.log_vars.detach()).cpu().tolist()

    def combine(self, losses):
        total = 0
        for i, task in enumerate(self.tasks):
            if task in losses:
                s = self.log_vars[i]
                total = total + torch.exp(-s) * (self.static[task] * losses[task]) + s
        return total

    def state_dict(self):
        return super().state_dict() | {"log_vars": self.log_vars.detach().cpu().clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])


def dwa_weights(last: Sequence[float], before: Sequence[float], temperature: float) -> List[float]:
    """``K * softmax(r / T)`` with ``r_t = last_t / before_t`` (1 where ``before_t`` is 0)."""
    ratios = [l / b if b > 0 else 1.0 for l, b in zip(last, before)]
    top = max(ratios)
    exps = [math.exp((r - top) / temperature) for r in ratios]
    return [len(ratios) * e / sum(exps) for e in exps]


class DynamicWeightAverage(Balancer):
    """Liu et al.'s DWA: in window k >= 2, ``w_t = K exp(r_t / T) / sum_i exp(r_i / T)`` with
    ``r_t = L_t(k-1) / L_t(k-2)``, ``L_t(j)`` the task's mean training loss over window j (over the
    micro-batches and ranks); 1 in windows 0 and 1. A window is an epoch or ``window`` optimizer steps.
    Each step's sums are added over the ranks at the step's end, so every rank holds the same state."""
    method = "dwa"

    def __init__(self, config, tasks, static=None):
        super().__init__(config, tasks, static)
        self.pending = torch.zeros(2, len(self.tasks), dtype=torch.float64)  # this rank's, since the last step
        self.sums = torch.zeros(2, len(self.tasks), dtype=torch.float64)  # the window's loss sums and counts
        self.history: List[List[float]] = []  # the last two windows' mean losses
        self.weights = [1.0] * len(self.tasks)

    def dynamic_weights(self):
        return list(self.weights)

    def combine(self, losses):
        return sum(self.weights[self.tasks.index(t)] * self.static[t] * losses[t] for t in losses)

    def observe(self, losses):
        present = [t in losses for t in self.tasks]
        ref = next(iter(losses.values())).detach()
        zero = ref.new_zeros(())
        row = torch.stack([losses[t].detach() if t in losses else zero for t in self.tasks]).double()
        self.pending = self.pending.to(row.device) + torch.stack([row, torch.tensor(present, device=row.device).double()])

    def step_end(self, step, epoch_ended, reduce):
        self.sums = self.sums + reduce(self.pending).cpu()
        self.pending = torch.zeros_like(self.pending)
        if not (epoch_ended if self.config.window == "epoch" else step % self.config.window == 0):
            return
        sums, counts = self.sums
        self.history = (self.history + [(sums / counts.clamp(min=1)).tolist()])[-2:]
        self.sums = torch.zeros_like(self.sums)
        if len(self.history) == 2:
            self.weights = dwa_weights(self.history[1], self.history[0], self.config.temperature)

    def state_dict(self):
        return super().state_dict() | {"sums": self.sums.cpu().clone(), "history": [list(h) for h in self.history],
                                       "weights": list(self.weights)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.sums, self.history = state["sums"].clone(), [list(h) for h in state["history"]]
        self.weights = list(state["weights"])


class PCGrad(Balancer):
    """Yu et al.'s PCGrad: the loss is the static-weighted sum, but the gradient is built by
    ``balancing_pcgrad``: one backward per task, conflicting shared-parameter gradients projected in a
    seeded random order (``generator``, whose state is checkpointed), summed."""
    method = "pcgrad"

    def __init__(self, config, tasks, static=None, seed=0):
        super().__init__(config, tasks, static)
        self.generator = torch.Generator().manual_seed(seed)
        self.gradients = TaskGradients(self.tasks)

    def accumulate(self, losses: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor], scale: float) -> None:
        """A micro-batch's per-task gradients, of ``scale`` x the static-weighted task losses."""
        self.gradients.accumulate({t: losses[t] * (self.static[t] * scale) for t in losses}, params)

    def apply(self, params: Sequence[torch.Tensor], mean=None) -> None:
        """At the optimizer step: the projected total into ``.grad`` (``mean``: over the ranks)."""
        self.gradients.apply(params, draw_orders(len(self.tasks), self.generator), mean)

    def state_dict(self):
        return super().state_dict() | {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


def build_balancer(settings: Any, tasks: Sequence[str], static: Optional[Mapping[str, float]] = None,
                   device: Any = None, default_seed: int = 0) -> Balancer:
    """The balancer of ``settings`` (a dict, None or ``BalancingConfig``) over ``tasks``; ``static``: the
    tasks' fixed loss weights (default 1); ``device``: where learned weights live."""
    config = balancing_from_dict(settings)
    if config.method == "uncertainty":
        return UncertaintyWeighting(config, tasks, static, device=device)
    if config.method == "dwa":
        return DynamicWeightAverage(config, tasks, static)
    if config.method == "pcgrad":
        return PCGrad(config, tasks, static, seed=default_seed if config.seed is None else config.seed)
    return Balancer(config, tasks, static)
