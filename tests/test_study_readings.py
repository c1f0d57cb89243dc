"""The readings beside a study's report (``sift_ds.study.readings``, ``run_events``,
``launch/readings.py``): the frontier interpolated in log(cost) against numpy's interpolation of the
logarithm, each seed on its own seed's frontier against a hand-built one-seed frontier, a seed's
departure and a run's gain alone against brute force, and the tool's linear reading of a committed
study against the figures compare.py wrote into its results.csv (and its one-line refusal of a folder
without a study)."""
import csv
import math
import os

import numpy as np
import pytest

from launch_helpers import load_cli
from launcher import REPO
from sift_ds.study.analysis import Curve
from sift_ds.study.frontier import INSIDE, LOG, finals, frontier, frontier_cost, own_frontier
from sift_ds.study.run_events import alone_gain, departure


def run(samples, seconds, loss, acc):
    return Curve(np.array([samples / 2, samples]), np.array([seconds / 2, seconds]),
                 np.array([loss + 1.0, loss]), np.array([acc / 2, acc]), 0.0, {})


def test_log_interpolation_is_linear_in_the_logarithm_of_the_cost():
    rng = np.random.default_rng(0)
    for _ in range(20):
        costs = np.sort(rng.uniform(1e3, 1e5, 3))
        losses = np.sort(rng.uniform(4.0, 6.0, 3))[::-1]
        front = frontier([finals([run(c, c / 100, v, 0.1)]) for c, v in zip(costs, losses)])
        goal = rng.uniform(losses[-1], losses[0])
        want = math.exp(np.interp(goal, losses[::-1], np.log(costs)[::-1]))
        got, where = frontier_cost(front, "loss", "samples", goal, LOG)
        assert where == INSIDE and got == pytest.approx(want, rel=1e-12)
        linear = np.interp(goal, losses[::-1], costs[::-1])
        assert frontier_cost(front, "loss", "samples", goal)[0] == pytest.approx(linear, rel=1e-12)
        assert got <= linear * (1 + 1e-12)  # the chord of a convex function lies above it: a smaller saving


def test_each_seed_on_its_own_frontier():
    # Two vanilla budgets, seeds 0 and 1 (in another order in the second budget), and an arm with
    # seeds 1 and 0: seed s reads against the straight line through its own two vanilla points.
    small = finals([run(1000, 10, 5.0, .10), run(1000, 10, 5.2, .12)])   # seeds 0, 1
    large = finals([run(3000, 30, 4.6, .20), run(3000, 30, 4.0, .16)])   # seeds 1, 0
    arm = finals([run(2000, 25, 4.9, .15), run(2000, 25, 4.5, .11)])     # seeds 1, 0
    got = own_frontier([(small, [0, 1]), (large, [1, 0])], arm, [1, 0], "loss", "samples")
    seed1 = 1000 + (5.2 - 4.9) / (5.2 - 4.6) * 2000
    seed0 = 1000 + (5.0 - 4.5) / (5.0 - 4.0) * 2000
    assert got[1] == (pytest.approx(seed1 / 2000), INSIDE) and got[0] == (pytest.approx(seed0 / 2000), INSIDE)
    assert own_frontier([(small, [0, 1]), (large, [1])], arm, [1, 0], "loss", "samples").keys() == {1}


def test_departure_and_alone_gain_against_brute_force():
    rng = np.random.default_rng(1)
    steps = list(range(100, 1300, 100))
    for _ in range(50):
        others = [{s: 6.0 - s / 1000 + rng.normal(0, 0.02) for s in steps} for _ in range(2)]
        drop = int(rng.integers(0, len(steps)))
        own = {s: 6.0 - s / 1000 - (0.3 if i >= drop else 0.0) + rng.normal(0, 0.02) for i, s in enumerate(steps)}
        below = [min(o[s] for o in others) - own[s] > 0.1 for s in steps]
        want = next((steps[i] for i in range(len(steps)) if all(below[i:])), None)
        assert departure(own, others, 0.1) == want
    records = [{"time": t, "tokens_per_s": v} for t, v in [(1, 100), (2, 110), (3, 90), (4, 130), (5, 140), (6, 150)]]
    assert alone_gain(records, 3.5) == (pytest.approx(145 / 100), 2)  # the window at t=4 spans the end
    assert alone_gain(records, 10) is None


def test_the_tools_linear_reading_is_the_reports(tmp_path, capsys):
    tool = load_cli(os.path.join(REPO, "launch", "readings.py"))  # its main, in this process
    study = os.path.join(REPO, "docs", "results", "budget_l12h128")
    assert tool.main([study, "--bootstrap", "20"]) == 0
    rows = {r["arm"]: r for r in csv.DictReader(open(os.path.join(study, "results.csv")))}
    table = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| entropy")]
    assert len(table) == 8  # 2 arms x 2 metrics x 2 axes
    for cells in table:
        arm, figure, linear = cells[0].lstrip("| "), cells[1], cells[2]
        metric = "loss" if figure.endswith("val_loss") else "acc"
        axis = "samples" if figure.startswith("samples") else "time"
        assert linear.startswith(f"{float(rows[arm][f'budget_matched_{metric}_{axis}']):.2f}×"), cells
        log = float(cells[3].split("×")[0].lstrip("<>"))
        assert log <= float(linear.split("×")[0]) + 1e-9
    with pytest.raises(SystemExit) as exc:
        tool.main([str(tmp_path)])
    assert exc.value.code == 2 and capsys.readouterr().err == f"readings.py: error: {tmp_path}: no study.json " \
        "(a compare.py --out folder is expected)\n"
