"""The study's report: ``OUT/results.md`` (Markdown tables with the command, date, seeds and a
legend), ``OUT/results.csv`` (one row per arm) and ``OUT/plots/*.png`` (per arm the seed-mean
validation curve, with the seeds' min..max shaded), from an ``analysis.Study``.
"""
from __future__ import annotations

import csv
import math
import os
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from .analysis import AXES, FINAL_EXTRAS, METRICS, Curve, Spread, Study, band
from .final_extras import extras_markdown
from .tables import table as _table
from .arms import Arm
from .frontier import BOUND_ABOVE, BOUND_BELOW, BudgetStudy

if TYPE_CHECKING:
    from .charges import OneOff

PLOTS = [("val_loss", "samples"), ("val_acc", "samples"), ("val_loss", "time"), ("val_acc", "time")]
AXIS_LABEL = {"samples": "backprop samples", "time": "training wall time (s)"}

LEGEND = """\
**Legend.** *target*: the mean over the vanilla seeds of their final val_loss (resp. val_acc).
*to target (mean curve)*: backprop samples (or training seconds, `elapsed_s`) at which the arm's
seed-mean validation curve first reaches the target, interpolated linearly between evaluations
(`never`: not within the run); for vanilla it is at most its final evaluation.
*seeds min..max (reached)*: the same for each seed's own curve, and how many seeds reach it.
*speed-up*: vanilla's figure / the arm's (>1: the arm is faster; 1 for vanilla by definition;
0 when the arm never reaches the target); *95% CI*: percentile bootstrap (2.5..97.5) over seeds,
each resample drawing every arm's seeds with replacement and taking the target from the resampled
vanilla seeds. *mean ± std [min..max]*: over seeds (std with ddof 1). *selection share*: fraction of
the step time spent scoring and selecting, averaged over the records after SIFT's warm-up (0 for
a run that never selects, such as vanilla). *SIFT overhead share*: all that SIFT adds to a vanilla
step, as a fraction of the loop's wall time: the selection plus the reading and masking of the rows
it drops (`sift/overhead_share`). *probe*: the early-exit fidelity probe (Spearman
correlation of the exit-k scores with the full model's per-sequence loss on a fixed validation
batch, and the overlap of their top halves; 0.5 = chance), averaged over the evaluations after
SIFT's warm-up.
Wall-clock figures compare only runs that had the machine to the same extent (see `--parallel` in
the command). *Noise yardstick*: how far vanilla seeds differ from each other; a speed-up inside it is not
distinguishable from seed noise.
"""


def _num(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "never" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def _spread(s: Spread, digits: int = 4) -> str:
    if not s.total:
        return "—"
    return f"{_num(s.mean, digits)} ± {_num(s.std, 2)} [{_num(s.lo, digits)}..{_num(s.hi, digits)}]"


BUDGET_LEGEND = """\
**Budget-matched speed-up.** Every run's learning rate decays to zero at its own last step. The
vanilla arms at several budgets trace the *frontier*: their mean final value (over seeds) against
their cost, made monotone (the best reached with at most that budget). An arm's speed-up is the
frontier's cost at the arm's mean final value, interpolated linearly between neighbouring budgets,
divided by the arm's own mean cost; in backprop samples and in training seconds (evaluation
excluded). `>x`: the arm ends better than the largest vanilla budget, so the speed-up is at least x;
`<x`: worse than the smallest, at most x (never extrapolated). *seeds*: each seed's final value read
on the mean frontier. *95% CI*: percentile bootstrap redrawing the seeds of every vanilla budget and
of the arm.
"""


def _bound(value: float, where: str) -> str:
    return f"{where}{_num(value, 3)}" if where in (BOUND_ABOVE, BOUND_BELOW) else _num(value, 3)


def budget_markdown(budget: BudgetStudy) -> List[str]:
    out = ["", "## Budget-matched speed-up (the vanilla frontier)", ""]
    front = budget.frontier
    out += _table(["vanilla budget", "backprop samples", "training seconds", "final val_loss", "final val_acc"],
                  [[label, _num(front.cost["samples"][i], 6), _num(front.cost["time"][i], 5),
                    _num(front.value["loss"][i]), _num(front.value["acc"][i])]
                   for i, label in enumerate(budget.frontier_labels)])
    for metric in METRICS:
        rows = []
        for label, result in budget.arms.items():
            row = [label]
            for axis in AXES:
                m = result[(metric, axis)]
                row += [f"**{_bound(m.speedup, m.where)}** [{_num(m.interval[0], 3)}..{_num(m.interval[1], 3)}]",
                        "..".join(_num(x, 3) for x in (min(m.seeds), max(m.seeds)))]
            rows.append(row)
        out += ["", f"### At equal final {METRICS[metric][0]}", ""]
        out += _table(["arm", "samples speed-up [95% CI]", "seeds min..max", "wall-clock speed-up [95% CI]",
                       "seeds min..max"], rows)
    return out + ["", BUDGET_LEGEND]


def markdown(study: Study, arms: Sequence[Arm], seeds: Dict[str, List[int]], command: str,
             budget: Optional[BudgetStudy] = None, charged: Optional[Dict[str, OneOff]] = None) -> str:
    out = ["# SIFT vs vanilla: multi-seed comparison", "",
           f"Command: `{command}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  ",
           "Targets (vanilla's mean final): "
           + ", ".join(f"{METRICS[m][0]} {_num(v)}" for m, v in study.targets.items()),
           "", "## Arms", ""]
    out += _table(["arm", "seeds", "overrides"],
                  [[a.label, ",".join(map(str, seeds.get(a.label, []))) or "none finished",
                    f"`{' '.join(a.overrides)}`"] for a in arms])
    if charged:
        out += ["", "## One-off costs charged", "",
                "Added to every point of these arms' curves, on both axes (sift_ds.study.charges): the work done "
                "once before the run, in seconds and in backprop samples of the run's model with the same FLOPs.", ""]
        out += _table(["arm", "seconds", "sample equivalents", "what"],
                      [[label, _num(c.seconds), _num(c.samples), "; ".join(c.what)] for label, c in charged.items()])
    for metric in METRICS:
        out += ["", f"## Speed-up to vanilla's final {METRICS[metric][0]} ({_num(study.targets[metric])})", ""]
        rows = []
        for a in study.arms:
            row = [a.label]
            for axis in AXES:
                t = a.to_target[(metric, axis)]
                row += [_num(t.mean_curve, 5),
                        f"{_num(t.seeds.lo, 5)}..{_num(t.seeds.hi, 5)} ({t.seeds.n}/{t.seeds.total})",
                        f"**{_num(t.speedup, 3)}** [{_num(t.interval[0], 3)}..{_num(t.interval[1], 3)}]"]
            rows.append(row)
        out += _table(["arm", "samples to target (mean curve)", "seeds min..max (reached)", "speed-up [95% CI]",
                       "seconds to target (mean curve)", "seeds min..max (reached)",
                       "wall-clock speed-up [95% CI]"], rows)
    if budget is not None:
        out += budget_markdown(budget)
    out += ["", "## Final evaluation", ""]
    out += _table(["arm", "val_loss mean ± std [min..max]", "val_acc mean ± std [min..max]", "selection share",
                   "SIFT overhead share", "probe Spearman", "probe top-half overlap"],
                  [[a.label, _spread(a.final["loss"]), _spread(a.final["acc"]), _spread(a.selection_share, 3),
                    _spread(a.overhead_share, 3),
                    _spread(a.probe["probe/spearman"], 3), _spread(a.probe["probe/top_half_overlap"], 3)]
                   for a in study.arms])
    for metric in METRICS:
        out += ["", f"## {METRICS[metric][0]} at equal backprop samples (mean ± std over seeds)", ""]
        header = ["arm"] + [f"{int(p)}" for p in study.points]
        out += _table(header, [[a.label] + [f"{_num(s.mean)} ± {_num(s.std, 2)}" for s in a.at_points[metric]]
                               for a in study.arms])
    out += ["", "## Noise yardstick (vanilla seeds)", ""]
    out += _table(["measure", "value"], [[k, _num(v)] for k, v in study.noise.items()])
    plots = [f"![{k} vs {x}](plots/{k}_vs_{x}.png)" for k, x in PLOTS]
    return "\n".join(out + ["", LEGEND, "## Plots", ""] + plots) + "\n"


def csv_rows(study: Study, seeds: Dict[str, List[int]], budget: Optional[BudgetStudy] = None,
             curves: Optional[Dict[str, List[Curve]]] = None) -> List[dict]:
    rows = []
    for a in study.arms:
        row = {"arm": a.label, "seeds": len(seeds.get(a.label, []))}
        for metric, (key, _) in METRICS.items():
            s = a.final[metric]
            row.update({f"final_{key}_mean": s.mean, f"final_{key}_std": s.std,
                        f"final_{key}_min": s.lo, f"final_{key}_max": s.hi})
        row.update({"selection_share_mean": a.selection_share.mean, "selection_share_std": a.selection_share.std,
                    "overhead_share_mean": a.overhead_share.mean,
                    "probe_spearman_mean": a.probe["probe/spearman"].mean,
                    "probe_top_half_overlap_mean": a.probe["probe/top_half_overlap"].mean})
        for (metric, axis), t in a.to_target.items():
            p = f"{metric}_target_{axis}"
            q = f"speedup_{metric}_{axis}"
            row.update({p: t.mean_curve, f"{p}_seed_min": t.seeds.lo, f"{p}_seed_max": t.seeds.hi,
                        f"{p}_seeds_reached": t.seeds.n, q: t.speedup,
                        f"{q}_ci_lo": t.interval[0], f"{q}_ci_hi": t.interval[1]})
        matched = budget.arms.get(a.label, {}) if budget is not None else {}
        for metric in METRICS if budget is not None else ():
            for axis in AXES:
                m = matched.get((metric, axis))
                q = f"budget_matched_{metric}_{axis}"
                row.update({q: m.speedup if m else None, f"{q}_bound": m.where if m else None,
                            f"{q}_ci_lo": m.interval[0] if m else None, f"{q}_ci_hi": m.interval[1] if m else None})
        for key in FINAL_EXTRAS:
            values = [c.extras[key] for c in (curves or {}).get(a.label, []) if key in c.extras]
            if values:
                row[f"final_{key}_mean"] = sum(values) / len(values)
        rows.append(row)
    return rows


def y_range(series: Sequence[Sequence[float]], xs: Sequence[Sequence[float]], lower: bool) -> Tuple[float, float]:
    """A y-range that shows where the arms differ: the values after the first quarter of the x-range
    (the first evaluations, far from the rest, would squeeze it), padded by 8%."""
    end = max(max(x) for x in xs)
    kept = [y for ys, x in zip(series, xs) for y, xi in zip(ys, x) if xi >= 0.25 * end]
    lo, hi = min(kept), max(kept)
    pad = 0.08 * (hi - lo) if hi > lo else 0.01 * abs(hi) + 1e-3
    return lo - pad, hi + pad


def plot(study: Study, curves: Dict[str, List[Curve]], key: str, axis: str, path: str,
         budget: Optional[BudgetStudy] = None) -> None:
    # matplotlib stays off the import path of sift_ds.study (only the report's plots need it).
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    xs, ys = [], []
    for a in study.arms:
        x, mean, lo, hi = band(curves[a.label], key, axis)
        line, = ax.plot(x, mean, marker="o", markersize=3, label=f"{a.label} ({len(curves[a.label])} seeds)")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        xs += [x, x, x]
        ys += [mean, lo, hi]
    metric = "loss" if key == "val_loss" else "acc"
    ax.axhline(study.targets[metric], color="gray", linestyle="--", linewidth=1, label="target (vanilla mean final)")
    if budget is not None:
        fx, fy = budget.frontier.cost[axis], budget.frontier.value[metric]
        ax.plot(fx, fy, color="black", linestyle=":", marker="s", markersize=6, linewidth=1.5,
                label="vanilla frontier (final value per budget)")
    ax.set_ylim(*y_range(ys, xs, METRICS[metric][1]))
    ax.set_xlabel(AXIS_LABEL[axis])
    ax.set_ylabel(key)
    ax.set_title(f"{key} vs {AXIS_LABEL[axis]}: seed mean, min..max shaded")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: str, study: Study, curves: Dict[str, List[Curve]], arms: Sequence[Arm],
          seeds: Dict[str, List[int]], command: str, budget: Optional[BudgetStudy] = None,
          charged: Optional[Dict[str, OneOff]] = None) -> List[str]:
    """Write results.md, results.csv and the four plots; returns their paths."""
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    paths = [os.path.join(out, "results.md"), os.path.join(out, "results.csv")]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(markdown(study, arms, seeds, command, budget, charged))
        extras = extras_markdown(curves)
        if extras:
            f.write("\n".join(extras) + "\n")
    rows = csv_rows(study, seeds, budget, curves)
    with open(paths[1], "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    for key, axis in PLOTS:
        paths.append(os.path.join(out, "plots", f"{key}_vs_{axis}.png"))
        plot(study, curves, key, axis, paths[-1], budget)
    return paths
