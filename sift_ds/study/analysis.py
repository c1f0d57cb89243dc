"""Statistics of a study's validation curves (pure functions, numpy only; no file access).

A run's curve is its evaluations: backprop ``samples``, training wall time ``elapsed_s``,
``val_loss`` and ``val_acc``. An arm's seeds are compared on their common evaluation points. The
targets come from vanilla: the mean over its seeds of the final val_loss (resp. val_acc), which is
the final value of vanilla's seed-mean curve. "Samples (or seconds) to target" is where a curve
first reaches the target, by linear interpolation between evaluations (inf: never). An arm's
headline figure is the crossing of its seed-mean curve (for vanilla it is at most its final
samples, so the ratio is always defined; the mean of per-seed crossings is not, as the vanilla
seeds that end above their own mean never reach it); the per-seed crossings give the spread.
Speed-up = vanilla's figure / the arm's, with a percentile bootstrap over seeds: each resample
draws each arm's seeds with replacement and recomputes the target from the resampled vanilla seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

INF = math.inf
BASELINE = "vanilla"
METRICS = {"loss": ("val_loss", True), "acc": ("val_acc", False)}  # name -> (field, lower is better)
AXES = ("samples", "time")
PROBE_KEYS = ("probe/spearman", "probe/top_half_overlap")
# Reported at the final evaluation when a run has them (the mlm+nsp objective), not compared on curves.
FINAL_EXTRAS = {"val_nsp_loss": "NSP loss", "val_nsp_acc": "NSP accuracy"}


def dedupe(records: Sequence[dict]) -> List[dict]:
    """One record per step, the last one written (a resumed run rewrites steps), sorted by step."""
    by_step = {}
    for record in records:
        by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


@dataclass(frozen=True)
class Curve:
    samples: np.ndarray
    elapsed: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray
    selection_share: float  # mean over the records outside SIFT's warm-up; 0 if none (never selected, e.g. vanilla)
    probe: Dict[str, float]  # fidelity probe (probe/spearman, probe/top_half_overlap): mean after warm-up; NaN if none
    overhead_share: float = math.nan  # sift/overhead_share (selection + data of dropped rows), mean after warm-up
    extras: Dict[str, float] = field(default_factory=dict)  # FINAL_EXTRAS at the last evaluation that has them


def curve(records: Sequence[dict]) -> Curve:
    rows = dedupe(records)
    evals = [r for r in rows if r.get("val_loss") is not None and r.get("val_acc") is not None]
    if not evals:
        raise ValueError("no evaluation record")
    shares = [r.get("sift/selection_share") or 0.0 for r in rows if not r.get("sift/warmup")]
    col = lambda key: np.array([float(r[key]) for r in evals])  # noqa: E731
    probe = {}
    for key in PROBE_KEYS:
        values = [float(r[key]) for r in rows if not r.get("sift/warmup") and r.get(key) is not None]
        probe[key] = float(np.nanmean(values)) if values and not np.all(np.isnan(values)) else math.nan
    overhead = [float(r["sift/overhead_share"]) for r in rows
                if not r.get("sift/warmup") and r.get("sift/overhead_share") is not None]
    extras = {key: float(r[key]) for key in FINAL_EXTRAS for r in evals[-1:] if r.get(key) is not None}
    return Curve(col("samples"), col("elapsed_s"), col("val_loss"), col("val_acc"),
                 float(np.mean(shares)) if shares else 0.0, probe, float(np.mean(overhead)) if overhead else math.nan,
                 extras)


def crossing(y, target: float, lower: bool = True) -> Optional[Tuple[int, float]]:
    """Where ``y`` first reaches ``target`` (<= when ``lower``, else >=): (i, t) = between points
    i-1 and i at fraction t; (0, 1.0) when the first point already does; None: never."""
    y = np.asarray(y, dtype=float)
    hits = np.flatnonzero(y <= target if lower else y >= target)
    if not len(hits):
        return None
    i = int(hits[0])
    if i == 0:
        return 0, 1.0
    return i, float((target - y[i - 1]) / (y[i] - y[i - 1]))


def position(x, where: Optional[Tuple[int, float]]) -> float:
    """The x of a ``crossing`` (inf for None)."""
    if where is None:
        return INF
    i, t = where
    return float(x[0]) if i == 0 else float(x[i - 1] + t * (x[i] - x[i - 1]))


@dataclass(frozen=True)
class Stack:
    """An arm's seeds on their common evaluation points: ``samples`` (p,), the rest (seeds, p)."""

    samples: np.ndarray
    elapsed: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray


def stack(curves: Sequence[Curve], points: Optional[np.ndarray] = None) -> Stack:
    if not curves:
        raise ValueError("no finished run")
    common = points if points is not None else curves[0].samples
    for c in curves:
        common = np.intersect1d(common, c.samples)
    if not len(common):
        raise ValueError("the runs share no evaluation point")
    pick = lambda c, a: a[np.searchsorted(c.samples, common)]  # noqa: E731
    rows = lambda key: np.stack([pick(c, getattr(c, key)) for c in curves])  # noqa: E731
    return Stack(common, rows("elapsed"), rows("val_loss"), rows("val_acc"))


def reach(st: Stack, metric: str, target: float, rows=slice(None)) -> Tuple[float, float]:
    """(samples, seconds) at which the mean curve of ``rows`` first reaches ``target``."""
    key, lower = METRICS[metric]
    where = crossing(getattr(st, key)[rows].mean(0), target, lower)
    return position(st.samples, where), position(st.elapsed[rows].mean(0), where)


def target(base: Stack, metric: str, rows=slice(None)) -> float:
    """Mean over (the ``rows`` of) vanilla's seeds of their final value."""
    return float(getattr(base, METRICS[metric][0])[rows].mean(0)[-1])


def ratio(base: float, arm: float) -> float:
    """base / arm; 0 when the arm never reaches the target."""
    return 0.0 if not math.isfinite(arm) else (INF if arm <= 0 else base / arm)


@dataclass(frozen=True)
class Spread:
    """Over seeds: mean (inf if any is inf), sample std (ddof 1) of the finite ones, min, max,
    and how many are finite of how many."""

    mean: float
    std: float
    lo: float
    hi: float
    n: int
    total: int


def spread(values) -> Spread:
    v = np.asarray(list(values), dtype=float)
    if not len(v):
        return Spread(math.nan, math.nan, math.nan, math.nan, 0, 0)
    finite = v[np.isfinite(v)]
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return Spread(float(v.mean()), std, float(v.min()), float(v.max()), len(finite), len(v))


def bootstrap(base: Stack, arm: Stack, metric: str, n: int = 2000, seed: int = 0) -> Dict[str, Tuple[float, float]]:
    """Percentile 2.5..97.5 interval of the speed-up ratio, per axis (samples, time)."""
    rng = np.random.default_rng(seed)
    nb, na = base.val_loss.shape[0], arm.val_loss.shape[0]
    draws = {axis: np.empty(n) for axis in AXES}
    for b in range(n):
        rb, ra = rng.integers(0, nb, nb), rng.integers(0, na, na)
        goal = target(base, metric, rb)
        for axis, v, a in zip(AXES, reach(base, metric, goal, rb), reach(arm, metric, goal, ra)):
            draws[axis][b] = ratio(v, a)
    return {axis: (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))) for axis, d in draws.items()}


@dataclass(frozen=True)
class ToTarget:
    """One arm, one target (loss or acc), one axis (samples or time)."""

    mean_curve: float      # crossing of the seed-mean curve (inf: never)
    seeds: Spread          # the per-seed crossings
    speedup: float         # vanilla's mean_curve / this one
    interval: Tuple[float, float]


@dataclass(frozen=True)
class ArmResult:
    label: str
    final: Dict[str, Spread]                        # metric -> final evaluation over seeds
    at_points: Dict[str, List[Spread]]              # metric -> one Spread per Study.points
    selection_share: Spread
    probe: Dict[str, Spread]                        # fidelity probe key -> over seeds
    to_target: Dict[Tuple[str, str], ToTarget]      # (metric, axis) -> ...
    overhead_share: Spread = Spread(math.nan, math.nan, math.nan, math.nan, 0, 0)  # sift/overhead_share over seeds


@dataclass(frozen=True)
class Study:
    targets: Dict[str, float]                        # metric -> vanilla's mean final value
    points: np.ndarray                               # samples of the evaluations common to all runs
    arms: List[ArmResult]
    noise: Dict[str, float]                          # the vanilla-seed yardstick, see yardstick()


def yardstick(base: Stack, targets: Dict[str, float]) -> Dict[str, float]:
    """How much vanilla differs from itself: slowest / fastest seed to the target (inf when a seed
    never reaches it), the "speed-up" of the luckiest seed over the mean curve, final std."""
    out = {}
    for metric, goal in targets.items():
        key = METRICS[metric][0]
        out[f"final_{key}_std"] = spread(getattr(base, key)[:, -1]).std
        mean = reach(base, metric, goal)
        seeds = [reach(base, metric, goal, [i]) for i in range(base.val_loss.shape[0])]
        for j, axis in enumerate(AXES):
            xs = [s[j] for s in seeds]
            out[f"{metric}_{axis}_slowest_over_fastest"] = ratio(max(xs), min(xs)) if math.isfinite(max(xs)) else INF
            out[f"{metric}_{axis}_luckiest_seed_speedup"] = ratio(mean[j], min(xs))
    return out


def analyze(curves: Dict[str, List[Curve]], n_boot: int = 2000, seed: int = 0) -> Study:
    """Everything the report shows, for arms given as label -> their seeds' curves."""
    if BASELINE not in curves:
        raise ValueError(f"no arm named {BASELINE!r}: the targets and speed-ups are measured against it")
    stacks = {label: stack(cs) for label, cs in curves.items()}
    points = stacks[BASELINE].samples
    for st in stacks.values():
        points = np.intersect1d(points, st.samples)
    base = stacks[BASELINE]
    targets = {m: target(base, m) for m in METRICS}
    arms = []
    for label, st in stacks.items():
        final = {m: spread(getattr(st, k)[:, -1]) for m, (k, _) in METRICS.items()}
        idx = np.searchsorted(st.samples, points)
        at = {m: [spread(getattr(st, k)[:, i]) for i in idx] for m, (k, _) in METRICS.items()}
        to = {}
        for m in METRICS:
            mean, vmean = reach(st, m, targets[m]), reach(base, m, targets[m])
            per_seed = [reach(st, m, targets[m], [i]) for i in range(st.val_loss.shape[0])]
            ci = {a: (1.0, 1.0) for a in AXES} if label == BASELINE else bootstrap(base, st, m, n_boot, seed)
            for j, axis in enumerate(AXES):
                to[(m, axis)] = ToTarget(mean[j], spread(p[j] for p in per_seed), ratio(vmean[j], mean[j]), ci[axis])
        probe = {k: spread(c.probe.get(k, math.nan) for c in curves[label]) for k in PROBE_KEYS}
        arms.append(ArmResult(label, final, at, spread(c.selection_share for c in curves[label]), probe, to,
                              spread(c.overhead_share for c in curves[label] if not math.isnan(c.overhead_share))))
    return Study(targets, points, arms, yardstick(base, targets))


def band(curves: Sequence[Curve], key: str, axis: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a plot: x (samples, or mean seconds), and the seeds' mean, min and max of ``key``."""
    st = stack(curves)
    y = getattr(st, key)
    x = st.samples if axis == "samples" else st.elapsed.mean(0)
    return x, y.mean(0), y.min(0), y.max(0)
