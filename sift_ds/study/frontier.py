"""Budget-matched speed-ups: each arm's final result against the vanilla *frontier*.

"Samples to vanilla's final loss" (``analysis``) reads an arm's curve in the middle of its
learning-rate schedule, which has not decayed yet, against vanilla's fully decayed end; that
flatters selection (Kaddour et al., "No Train No Gain", NeurIPS 2023). Here every run's schedule
decays to zero at its own last step, and vanilla runs at several budgets (``vanilla@max_steps=N``
arms) trace the frontier: the mean final val_loss (val_acc) over seeds against the budget, in
backprop samples and in training seconds (``elapsed_s``: evaluation excluded). An arm's
budget-matched speed-up is the frontier's cost interpolated between neighbouring budgets at the
arm's mean final value, divided by the arm's own cost. The interpolation is linear in the cost
(``LINEAR``, the reports' reading) or linear in its logarithm (``LOG``: a loss that falls by the same
amount per doubling of the budget, as learning curves do); between two budgets the log reading is
the lower cost, so it gives the smaller saving. ``own_frontier`` reads each seed of an arm on the
frontier of the vanilla runs of the same seed instead of on the seed-mean frontier.

The frontier is made monotone (the best mean final value reached with at most that budget), so a
noisy larger budget cannot bend it back. An arm better than the largest budget, or worse than the
smallest, lies off the frontier: its speed-up is then a bound (``>`` or ``<``) computed at that
end of the frontier, never extrapolated. Intervals are percentile bootstraps over seeds: every
resample redraws the seeds of each vanilla budget and of the arm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .analysis import AXES, METRICS, Curve

BOUND_ABOVE, BOUND_BELOW, INSIDE = ">", "<", ""
LINEAR, LOG = "linear", "log"  # interpolation of the frontier's cost between budgets
SCALES = (LINEAR, LOG)


@dataclass(frozen=True)
class Finals:
    """Each seed's final evaluation: cost on both axes and both metrics, arrays over seeds."""

    samples: np.ndarray
    elapsed: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray

    def cost(self, axis: str) -> np.ndarray:
        return self.samples if axis == "samples" else self.elapsed

    def value(self, metric: str) -> np.ndarray:
        return getattr(self, METRICS[metric][0])

    def take(self, rows) -> "Finals":
        return Finals(self.samples[rows], self.elapsed[rows], self.val_loss[rows], self.val_acc[rows])


def finals(curves: Sequence[Curve]) -> Finals:
    if not curves:
        raise ValueError("no finished run")
    col = lambda key: np.array([float(getattr(c, key)[-1]) for c in curves])  # noqa: E731
    return Finals(col("samples"), col("elapsed"), col("val_loss"), col("val_acc"))


@dataclass(frozen=True)
class Frontier:
    """Vanilla's budgets, ascending: mean cost per axis and mean final value per metric."""

    cost: Dict[str, np.ndarray]    # axis -> (budgets,)
    value: Dict[str, np.ndarray]   # metric -> (budgets,), made monotone


def frontier(budgets: Sequence[Finals]) -> Frontier:
    """The frontier of vanilla runs at several budgets (at least two, of distinct sample counts)."""
    if len(budgets) < 2:
        raise ValueError(f"the vanilla frontier needs vanilla arms at two or more budgets, got {len(budgets)}")
    order = np.argsort([b.samples.mean() for b in budgets])
    ordered = [budgets[i] for i in order]
    samples = np.array([b.samples.mean() for b in ordered])
    if np.any(np.diff(samples) <= 0):
        raise ValueError(f"the vanilla frontier's budgets must differ, got backprop samples {samples.tolist()}")
    cost = {axis: np.array([b.cost(axis).mean() for b in ordered]) for axis in AXES}
    value = {}
    for metric, (_, lower) in METRICS.items():
        v = np.array([b.value(metric).mean() for b in ordered])
        value[metric] = np.minimum.accumulate(v) if lower else np.maximum.accumulate(v)
    return Frontier(cost, value)


def frontier_cost(front: Frontier, metric: str, axis: str, goal: float, scale: str = LINEAR) -> Tuple[float, str]:
    """(cost, where) at which the frontier reaches ``goal``: interpolated inside it (in the cost or,
    with ``LOG``, in its logarithm); at the largest
    budget with ``BOUND_ABOVE`` when even that does not reach it (the true cost is larger); at the
    smallest with ``BOUND_BELOW`` when the smallest budget already does better (it is smaller)."""
    lower = METRICS[metric][1]
    v, c = front.value[metric], front.cost[axis]
    better = (lambda a, b: a <= b) if lower else (lambda a, b: a >= b)
    if not better(v[-1], goal):
        return float(c[-1]), BOUND_ABOVE
    if better(v[0], goal):
        return float(c[0]), BOUND_BELOW if v[0] != goal else INSIDE
    i = int(np.flatnonzero([better(x, goal) for x in v])[0])  # first budget that reaches it, i >= 1
    if v[i] == v[i - 1]:
        return float(c[i]), INSIDE
    t = (goal - v[i - 1]) / (v[i] - v[i - 1])
    if scale == LOG:
        return float(c[i - 1] * (c[i] / c[i - 1]) ** t), INSIDE
    return float(c[i - 1] + t * (c[i] - c[i - 1])), INSIDE


@dataclass(frozen=True)
class Matched:
    """One arm, one metric, one axis: the budget-matched speed-up."""

    speedup: float                   # frontier cost at the arm's mean final value / the arm's mean cost
    where: str                       # INSIDE, BOUND_ABOVE (speed-up at least this), BOUND_BELOW (at most)
    interval: Tuple[float, float]    # bootstrap 2.5..97.5 percentiles (bounds taken at their value)
    seeds: Tuple[float, ...]         # per seed: frontier cost at that seed's final value / its cost
    frontier_cost: float             # vanilla's interpolated cost to the arm's mean final value
    arm_cost: float                  # the arm's mean cost


def matched(front: Frontier, arm: Finals, metric: str, axis: str, scale: str = LINEAR) -> Tuple[float, str]:
    cost, where = frontier_cost(front, metric, axis, float(arm.value(metric).mean()), scale)
    own = float(arm.cost(axis).mean())
    return (cost / own if own > 0 else math.inf), where


def budget_matched(budgets: Sequence[Finals], arm: Finals, n_boot: int = 2000, seed: int = 0, scale: str = LINEAR
                   ) -> Dict[Tuple[str, str], Matched]:
    """(metric, axis) -> ``Matched`` for one arm against the frontier of the vanilla ``budgets``."""
    front = frontier(budgets)
    rng = np.random.default_rng(seed)
    draws = {(m, a): np.empty(n_boot) for m in METRICS for a in AXES}
    for b in range(n_boot):
        resampled = [v.take(rng.integers(0, len(v.samples), len(v.samples))) for v in budgets]
        front_b = frontier(resampled)
        arm_b = arm.take(rng.integers(0, len(arm.samples), len(arm.samples)))
        for key in draws:
            draws[key][b] = matched(front_b, arm_b, *key, scale)[0]
    out = {}
    for metric in METRICS:
        for axis in AXES:
            speedup, where = matched(front, arm, metric, axis, scale)
            per_seed = tuple(matched(front, arm.take([i]), metric, axis, scale)[0] for i in range(len(arm.samples)))
            d = draws[(metric, axis)]
            out[(metric, axis)] = Matched(
                speedup, where, (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))), per_seed,
                frontier_cost(front, metric, axis, float(arm.value(metric).mean()), scale)[0],
                float(arm.cost(axis).mean()))
    return out


@dataclass(frozen=True)
class BudgetStudy:
    frontier: Frontier
    frontier_labels: List[str]                            # the vanilla arms, ascending budget
    arms: Dict[str, Dict[Tuple[str, str], Matched]]       # every other arm


def analyze(curves: Dict[str, List[Curve]], vanilla: Sequence[str], n_boot: int = 2000,
            seed: int = 0, scale: str = LINEAR) -> Optional[BudgetStudy]:
    """The budget-matched comparison of every non-vanilla arm (``scale``: the frontier's
    interpolation); None with fewer than two vanilla budgets among the finished arms."""
    present = [label for label in vanilla if curves.get(label)]
    if len(present) < 2:
        return None
    budgets = {label: finals(curves[label]) for label in present}
    labels = sorted(present, key=lambda label: budgets[label].samples.mean())
    ordered = [budgets[label] for label in labels]
    front = frontier(ordered)
    arms = {label: budget_matched(ordered, finals(cs), n_boot, seed, scale)
            for label, cs in curves.items() if label not in budgets and cs}
    return BudgetStudy(front, labels, arms)


def own_frontier(budgets: Sequence[Tuple[Finals, Sequence[int]]], arm: Finals, arm_seeds: Sequence[int], metric: str,
                 axis: str, scale: str = LINEAR) -> Dict[int, Tuple[float, str]]:
    """Seed -> (speed-up, where) of that seed of ``arm`` read on the frontier of the vanilla runs of the
    same seed; ``budgets``: each vanilla budget's finals with the seed of each of their rows. Seeds
    that some budget lacks are left out."""
    out = {}
    for row, s in enumerate(arm_seeds):
        if all(s in list(seeds) for _, seeds in budgets):
            front = frontier([b.take([list(seeds).index(s)]) for b, seeds in budgets])
            out[s] = matched(front, arm.take([row]), metric, axis, scale)
    return out
