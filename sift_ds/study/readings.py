"""A budget-matched study read several ways beside its report's one (``launch/readings.py``): the
vanilla frontier interpolated linearly in the cost (the report's reading) and in log(cost), with
bootstrap intervals; each seed read on the seed-mean frontier and on the frontier of its own seed's
vanilla runs; (``frontier`` has the definitions)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from .analysis import AXES, METRICS, Curve
from .frontier import LINEAR, LOG, Matched, budget_matched, finals, own_frontier

Key = Tuple[str, str]  # (metric, axis)


@dataclass(frozen=True)
class Reading:
    """One arm, one metric, one axis, read four ways."""

    linear: Matched                          # the seed-mean frontier, linear interpolation (the report's)
    log: Matched                             # the seed-mean frontier, interpolated in log(cost)
    own_linear: Dict[int, Tuple[float, str]]  # seed -> (speed-up, where) on its own seed's frontier
    own_log: Dict[int, Tuple[float, str]]


def read(curves: Dict[str, List[Curve]], seeds: Dict[str, List[int]], vanilla: Sequence[str], n_boot: int = 2000,
         boot_seed: int = 0) -> Dict[str, Dict[Key, Reading]]:
    """Arm label -> (metric, axis) -> ``Reading`` for every arm that is not one of the ``vanilla``
    budgets (at least two of them finished)."""
    labels = sorted((v for v in vanilla if curves.get(v)), key=lambda v: finals(curves[v]).samples.mean())
    if len(labels) < 2:
        raise ValueError(f"the vanilla frontier needs two or more finished vanilla budgets, got {labels}")
    budgets = [finals(curves[v]) for v in labels]
    with_seeds = [(b, seeds[v]) for b, v in zip(budgets, labels)]
    out = {}
    for label, arm_curves in curves.items():
        if label in labels or label in vanilla:
            continue
        arm = finals(arm_curves)
        by_scale = {scale: budget_matched(budgets, arm, n_boot, boot_seed, scale) for scale in (LINEAR, LOG)}
        out[label] = {(m, a): Reading(by_scale[LINEAR][(m, a)], by_scale[LOG][(m, a)],
                                      own_frontier(with_seeds, arm, seeds[label], m, a, LINEAR),
                                      own_frontier(with_seeds, arm, seeds[label], m, a, LOG))
                      for m in METRICS for a in AXES}
    return out


def _matched(m: Matched) -> str:
    return f"{m.where}{m.speedup:.2f}× [{m.interval[0]:.2f}–{m.interval[1]:.2f}]"


def _seeds(values: Dict[int, Tuple[float, str]]) -> str:
    if not values:
        return "—"
    mean = sum(v for v, _ in values.values()) / len(values)
    return ", ".join(f"{s}: {w}{v:.2f}" for s, (v, w) in values.items()) + f" (mean {mean:.2f})"


def markdown(readings: Dict[str, Dict[Key, Reading]]) -> str:
    """One table row per arm and figure: the four readings."""
    lines = ["| arm | figure | seed-mean frontier, linear [95% CI] | seed-mean frontier, log(cost) [95% CI] | "
             "each seed on the seed-mean frontier (linear) | each seed on its own frontier, linear | "
             "each seed on its own frontier, log(cost) |", "|---|---|---|---|---|---|---|"]
    for label, by_key in readings.items():
        for (metric, axis), r in by_key.items():
            figure = f"{'samples' if axis == 'samples' else 'wall-clock'}, equal {METRICS[metric][0]}"
            per_seed = ", ".join(f"{v:.2f}" for v in r.linear.seeds)
            lines.append(f"| {label} | {figure} | {_matched(r.linear)} | {_matched(r.log)} | {per_seed} | "
                         f"{_seeds(r.own_linear)} | {_seeds(r.own_log)} |")
    return "\n".join(lines) + "\n"
