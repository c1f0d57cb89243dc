"""The budget-matched saving against training length: one ``launch/compare.py`` study per horizon
(its own vanilla frontier, every schedule decayed at its own end), gathered into one table, one plot
and a log-linear trend.

Each horizon's figures are read from its study's ``results.csv`` (the one home of them): per
selecting arm, the budget-matched speed-up in samples and in wall-clock, at equal final loss and at
equal final accuracy, with its bootstrap interval over seeds, or a bound when the arm lies off that
horizon's frontier. A horizon's training tokens are its ``vanilla`` arm's backprop samples times the
sequence length (from the finished runs).

The trend is a *model*, not a measurement: per arm and figure, a weighted least-squares line of the
saving against log10(training tokens) through the horizons where the saving is inside the frontier
and has an interval (two seeds or more),
each weighted by 1 / sigma^2 with sigma = (interval width) / 3.92 (a normal reading of the 95%
bootstrap interval). Extrapolated to another horizon it assumes that the saving keeps changing by the
same amount per tenfold of tokens, that nothing else changes (model size, data, batch, selection
cost share), and that the seeds' spread is the only uncertainty. The break-even horizon is where
the line reaches a saving of 1, with Fieller's interval (the tokens where the line's 95% band
contains 1).
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..pretrain.metrics import last_step_record
from .analysis import AXES, BASELINE, METRICS

# The paper's BERT-base runs: 800k steps of 32 sequences x 8 GPUs x 512 tokens (131,072 tokens a step).
PAPER_TOKENS = 800_000 * 32 * 8 * 512
Z95 = 1.959963984540054
FLAT = 1e-12  # a trend slope below this (per tenfold of tokens) is a flat line: it never reaches 1
FIGURES: Tuple[Tuple[str, str], ...] = tuple((metric, axis) for metric in METRICS for axis in AXES)


@dataclass(frozen=True)
class Point:
    """One arm's budget-matched saving at one horizon, for one (metric, axis)."""

    saving: float
    lo: float
    hi: float
    where: str  # "" inside the frontier, ">" at least, "<" at most (frontier.BOUND_*)

    @property
    def inside(self) -> bool:
        return self.where == "" and all(map(math.isfinite, (self.saving, self.lo, self.hi)))


@dataclass(frozen=True)
class Horizon:
    """One study: its length, what each arm saved, and how much data its runs saw."""

    study: str
    steps: int            # the vanilla arm's steps
    tokens: int           # the vanilla arm's backprop tokens
    max_epoch: int        # the highest data epoch any finished run reached (0: no block repeated)
    seeds: Dict[str, int]  # finished seeds per selecting arm
    points: Dict[str, Dict[Tuple[str, str], Point]]


@dataclass(frozen=True)
class Trend:
    """A weighted least-squares line saving = intercept + slope * log10(tokens)."""

    intercept: float
    slope: float          # change of the saving per tenfold of tokens
    cov: np.ndarray       # 2x2 covariance of (intercept, slope)
    n: int                # horizons used

    def at(self, tokens: float) -> Tuple[float, float, float]:
        """The line's value at ``tokens`` and its 95% interval."""
        x = np.array([1.0, math.log10(tokens)])
        value = float(x @ np.array([self.intercept, self.slope]))
        sd = math.sqrt(max(float(x @ self.cov @ x), 0.0))
        return value, value - Z95 * sd, value + Z95 * sd

    def slope_interval(self) -> Tuple[float, float]:
        sd = math.sqrt(max(float(self.cov[1, 1]), 0.0))
        return self.slope - Z95 * sd, self.slope + Z95 * sd

    def break_even(self) -> Tuple[float, float, float]:
        """The training tokens where the line reaches a saving of 1 (no gain) and the 95% interval of
        that horizon (Fieller's: the tokens where the line's 95% band contains 1). The point is NaN
        when the line is flat (|slope| <= FLAT); the interval is (0, inf) when the slope's own
        interval includes 0, where the data cannot bound the break-even horizon."""
        a, b = self.intercept - 1.0, self.slope
        point = _tokens(-a / b) if abs(b) > FLAT else math.nan
        v00, v01, v11 = float(self.cov[0, 0]), float(self.cov[0, 1]), float(self.cov[1, 1])
        z2 = Z95 * Z95
        # the x = log10(tokens) where (a + b x)^2 <= z2 (v00 + 2 v01 x + v11 x^2)
        qa, qb, qc = b * b - z2 * v11, 2 * (a * b - z2 * v01), a * a - z2 * v00
        if qa <= 0:  # b^2 <= z2 v11: the slope is not told apart from 0
            return point, 0.0, math.inf
        root = math.sqrt(max(qb * qb - 4 * qa * qc, 0.0))  # >= 0 whenever b != 0: the point is inside
        return point, _tokens((-qb - root) / (2 * qa)), _tokens((-qb + root) / (2 * qa))


def _tokens(log10_tokens: float) -> float:
    """10 ** x without overflow: inf above, 0 below what a float holds."""
    return 10.0 ** log10_tokens if abs(log10_tokens) < 300 else (math.inf if log10_tokens > 0 else 0.0)


def _float(text: Optional[str]) -> float:
    return float(text) if text not in (None, "") else math.nan


def read_horizon(study: str) -> Horizon:
    """A finished compare.py study: ValueError naming the file when something is missing."""
    results = os.path.join(study, "results.csv")
    if not os.path.isfile(results):
        raise ValueError(f"{results}: no such file (run launch/compare.py for this horizon first)")
    vanilla = sorted(glob.glob(os.path.join(study, "runs", BASELINE, "seed*", "DONE")))
    if not vanilla:
        raise ValueError(f"{study}: no finished '{BASELINE}' run (runs/{BASELINE}/seed*/DONE)")
    run = os.path.dirname(vanilla[0])
    end = last_step_record(run)
    with open(os.path.join(run, "run_config.json"), encoding="utf-8") as f:
        seq_len = int(json.load(f)["options"]["seq_len"])
    epochs = [int(last_step_record(os.path.dirname(done)).get("epoch", 0))
              for done in glob.glob(os.path.join(study, "runs", "*", "seed*", "DONE"))]
    points: Dict[str, Dict[Tuple[str, str], Point]] = {}
    seeds: Dict[str, int] = {}
    with open(results, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            q = f"budget_matched_{FIGURES[0][0]}_{FIGURES[0][1]}"
            if row.get(q) in (None, ""):  # vanilla arms: the frontier itself
                continue
            seeds[row["arm"]] = int(row["seeds"])
            points[row["arm"]] = {
                (metric, axis): Point(_float(row[f"budget_matched_{metric}_{axis}"]),
                                      _float(row[f"budget_matched_{metric}_{axis}_ci_lo"]),
                                      _float(row[f"budget_matched_{metric}_{axis}_ci_hi"]),
                                      row[f"budget_matched_{metric}_{axis}_bound"] or "")
                for metric, axis in FIGURES}
    if not points:
        raise ValueError(f"{results}: no budget-matched arm (the study needs vanilla@max_steps=N arms)")
    return Horizon(study, int(end["step"]), int(end["samples"]) * seq_len, max(epochs, default=0), seeds, points)


def fit(horizons: Sequence[Horizon], arm: str, figure: Tuple[str, str], min_sigma: float = 1e-3) -> Optional[Trend]:
    """The weighted line through the horizons where ``arm``'s saving is inside the frontier and has an
    interval (two seeds or more); None with fewer than two such horizons."""
    xs, ys, sigmas = [], [], []
    for h in horizons:
        p = h.points.get(arm, {}).get(figure)
        if p is not None and p.inside and h.seeds.get(arm, 0) >= 2:
            xs.append(math.log10(h.tokens))
            ys.append(p.saving)
            sigmas.append(max((p.hi - p.lo) / (2 * Z95), min_sigma))
    if len(set(xs)) < 2:
        return None
    design = np.column_stack([np.ones(len(xs)), np.array(xs)])
    weights = 1.0 / np.square(np.array(sigmas))
    cov = np.linalg.inv(design.T @ (design * weights[:, None]))
    intercept, slope = cov @ (design.T @ (weights * np.array(ys)))
    return Trend(float(intercept), float(slope), cov, len(xs))


def arms_of(horizons: Sequence[Horizon]) -> List[str]:
    seen: List[str] = []
    for h in horizons:
        seen += [a for a in h.points if a not in seen]
    return seen


def label(metric: str, axis: str) -> str:
    return f"{'samples' if axis == 'samples' else 'wall-clock'} at equal {METRICS[metric][0].replace('val_', 'val ')}"


def _cell(p: Optional[Point], seeds: int) -> str:
    if p is None:
        return "-"
    if not p.inside:
        return f"{p.where}{p.saving:.3g}" if math.isfinite(p.saving) else "-"
    if seeds < 2:  # no interval from one seed
        return f"{p.saving:.2f} (1 seed)"
    return f"{p.saving:.2f} [{p.lo:.2f}..{p.hi:.2f}]"


def table(horizons: Sequence[Horizon], target_tokens: float) -> str:
    """Markdown: the savings per horizon, then the trend and its extrapolation per arm and figure."""
    hs = sorted(horizons, key=lambda h: h.tokens)
    lines = ["| arm | figure | " + " | ".join(f"{h.steps} steps ({h.tokens / 1e6:.2f} M tokens)" for h in hs) + " |",
             "|---|---|" + "---|" * len(hs)]
    for arm in arms_of(hs):
        for metric, axis in FIGURES:
            cells = [_cell(h.points.get(arm, {}).get((metric, axis)), h.seeds.get(arm, 0)) for h in hs]
            lines.append(f"| {arm} | {label(metric, axis)} | " + " | ".join(cells) + " |")
    lines += ["", "| horizon | seeds per arm | highest data epoch |", "|---|---|---|"]
    for h in hs:
        seeds = ", ".join(f"{a} {n}" for a, n in h.seeds.items())
        lines.append(f"| {h.steps} steps | {seeds} | {h.max_epoch} |")
    lines += ["", f"Trend (a model): saving = a + b * log10(tokens), weighted by the intervals; value at "
                  f"{target_tokens:.3g} tokens with a 95% interval.", "",
              "| arm | figure | horizons used | change per tenfold of tokens [95%] | at "
              f"{target_tokens:.3g} tokens [95%] | crosses 1 (no saving) at tokens [95%] |", "|---|---|---|---|---|---|"]
    for arm in arms_of(hs):
        for figure in FIGURES:
            trend = fit(hs, arm, figure)
            if trend is None:
                lines.append(f"| {arm} | {label(*figure)} | fewer than 2 | - | - | - |")
                continue
            lo, hi = trend.slope_interval()
            value, vlo, vhi = trend.at(target_tokens)
            lines.append(f"| {arm} | {label(*figure)} | {trend.n} | {trend.slope:+.3f} [{lo:+.3f}..{hi:+.3f}] | "
                         f"{_value_cell(value, vlo, vhi)} | {_break_even_cell(trend, hs[0].tokens)} |")
    return "\n".join(lines) + "\n"


def _value_cell(value: float, lo: float, hi: float) -> str:
    """The extrapolated saving; a straight line can fall below 0, which no saving can, and says so."""
    cell = f"{value:.2f} [{lo:.2f}..{hi:.2f}]"
    return cell if value > 0 else f"{cell}: below 0, past where a straight line can stand for a saving"


def _break_even_cell(trend: Trend, first_tokens: float) -> str:
    """Where the line crosses a saving of 1, said the way it goes: a falling line loses its saving
    there, a rising one gains it; a crossing before the shortest horizon measured is said as such."""
    point, lo, hi = trend.break_even()
    if math.isnan(point):
        return "never (a flat line)"
    falling = trend.slope < 0
    if point <= first_tokens:
        return f"{'below' if falling else 'above'} 1 from the shortest horizon on"
    bounds = "unbounded: the slope's interval includes 0" if lo == 0 and math.isinf(hi) else f"{lo:.2g}..{hi:.2g}"
    return f"{'falls' if falling else 'rises'} to 1 at {point:.2g} [{bounds}]"
