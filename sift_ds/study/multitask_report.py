"""The asynchronous-convergence study's report: from each run's ``result.json`` (``multitask_run``), per
arm and task the test accuracy at the task's best validation point and at the end, the average over
the tasks, the training time and (asynchronous-convergence arms) when each task converged, as the mean
over seeds with a 95% Student-t interval (mean ± t(0.975, n-1) * sd / sqrt(n)); and the paired
difference per seed of each asynchronous-convergence arm against each multi-task baseline.

The single-task arms (``single_<task>``) are read together as one row, "single-task": task t from
``single_t``, a seed's training time the sum of its single-task runs."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

SINGLE = "single-task"
POINTS = (("best", "at the task's best validation point"), ("final", "at the end"))


def interval(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, half-width of the 95% t-interval, n); half-width NaN below 2 values."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan, 0
    if len(v) < 2:
        return float(v.mean()), math.nan, 1
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half), len(v)


def fmt(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, half, n = interval(values)
    if not n:
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return f"{text} ± {half * scale:.{digits}f}" if n > 1 else f"{text} (1 seed)"


def by_seed(results: Sequence[Mapping], tasks: Sequence[str]) -> Dict[str, Dict[int, Dict]]:
    """arm -> seed -> {"best"/"final": {task: test accuracy}, "train_s", "converged_step", "best_step"};
    the single-task runs of a seed are merged into arm SINGLE once every task's run is there."""
    out: Dict[str, Dict[int, Dict]] = {}
    singles: Dict[int, List[Mapping]] = {}
    for r in results:
        if len(r["tasks"]) == 1:
            singles.setdefault(r["seed"], []).append(r)
            continue
        out.setdefault(r["arm"], {})[r["seed"]] = _row([r])
    for seed, runs in singles.items():
        if sorted(t for r in runs for t in r["tasks"]) == sorted(tasks):
            out.setdefault(SINGLE, {})[seed] = _row(runs)
    return out


def _row(runs: Sequence[Mapping]) -> Dict:
    row: Dict = {p: {} for p, _ in POINTS}
    row.update(train_s=sum(r["train_s"] for r in runs), converged_step={}, best_step={})
    for r in runs:
        for t in r["tasks"]:
            for p, _ in POINTS:
                row[p][t] = r[p][t]["test_accuracy"]
            row["best_step"][t] = r["best"][t]["step"]
            row["converged_step"].update(r.get("converged_step") or {})
    return row


def average(row: Mapping, point: str, tasks: Sequence[str]) -> float:
    return float(np.mean([row[point][t] for t in tasks]))


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def paired(arms: Mapping[str, Mapping[int, Dict]], arm: str, base: str, point: str, tasks: Sequence[str]
           ) -> Optional[Tuple[List[float], List[float]]]:
    """Per common seed: the arm's average minus the baseline's, and the baseline's averages."""
    seeds = sorted(set(arms.get(arm, {})) & set(arms.get(base, {})))
    if not seeds:
        return None
    base_avg = [average(arms[base][s], point, tasks) for s in seeds]
    return [average(arms[arm][s], point, tasks) - b for s, b in zip(seeds, base_avg)], base_avg


def markdown(results: Sequence[Mapping], tasks: Sequence[str], arm_order: Sequence[str]) -> List[str]:
    arms = by_seed(results, tasks)
    order = [a for a in arm_order if a in arms]
    lines: List[str] = []
    for point, where in POINTS:
        lines += ["", f"### Test accuracy (%) {where}", "",
                  "Mean over seeds ± the 95% t-interval's half-width; `n`: seeds.", ""]
        rows = []
        for arm in order:
            seeds = arms[arm]
            rows.append([arm, str(len(seeds))] + [fmt([seeds[s][point][t] for s in seeds]) for t in tasks]
                        + [fmt([average(seeds[s], point, tasks) for s in seeds])])
        lines += _table(["arm", "n", *tasks, "average"], rows)
    lines += ["", "### Training time (s per run: the training with its validation evaluations, not the start-up or "
              "the test evaluations; single-task: its four runs together)", ""]
    lines += _table(["arm", "n", "training time (s)"],
                    [[a, str(len(arms[a])), fmt([arms[a][s]["train_s"] for s in arms[a]], 1, 0)] for a in order])
    lines += ["", "### When each task peaked or converged (step)", "",
              "`best`: the step of the task's best validation accuracy (mean over seeds); `converged`: the step at "
              "which asynchronous convergence switched the task to distillation (mean over the seeds where it did, "
              "and in how many of them).", ""]
    rows = []
    for arm in order:
        seeds = arms[arm]
        cells = []
        for t in tasks:
            text = f"best {fmt([seeds[s]['best_step'][t] for s in seeds], 1, 0)}"
            done = [seeds[s]["converged_step"][t] for s in seeds if seeds[s]["converged_step"].get(t) is not None]
            if any(t in seeds[s]["converged_step"] for s in seeds):
                text += f"; converged {fmt(done, 1, 0).replace(' (1 seed)', '') if done else 'never'} in {len(done)}/{len(seeds)}"
            cells.append(text)
        rows.append([arm, *cells])
    lines += _table(["arm", *tasks], rows)
    return lines


def gains(results: Sequence[Mapping], tasks: Sequence[str], methods: Sequence[str], baselines: Sequence[str]
          ) -> List[Tuple[str, str, str, List[float], List[float]]]:
    """(method, baseline, point, per-seed differences of the average, baseline's per-seed averages)."""
    arms = by_seed(results, tasks)
    out = []
    for m in methods:
        for b in baselines:
            for point, _ in POINTS:
                pair = paired(arms, m, b, point, tasks)
                if pair:
                    out.append((m, b, point, *pair))
    return out


def gains_markdown(rows) -> List[str]:
    lines = ["", "### Asynchronous convergence against each multi-task baseline (average test accuracy, points)", "",
             "Paired by seed (same initial weights and batch order): the mean difference ± its 95% t-interval, and "
             "the baseline's own spread over seeds (sample sd of its average).", ""]
    table = []
    for m, b, point, diff, base in rows:
        sd = float(np.std(base, ddof=1)) * 100 if len(base) > 1 else math.nan
        mean, half, n = interval(diff)
        verdict = "—" if n < 2 else ("higher" if mean - half > 0 else "lower" if mean + half < 0 else "within noise")
        table.append([m, b, dict(POINTS)[point], fmt(diff, 100, 2), "—" if math.isnan(sd) else f"{sd:.2f}", verdict])
    return lines + _table(["method", "baseline", "point", "difference", "baseline sd", "reading"], table)
