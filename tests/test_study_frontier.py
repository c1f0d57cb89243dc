"""sift_ds.study.frontier: budget-matched speed-ups against the vanilla frontier, on synthetic final
results whose answers are worked out by hand in each test."""
import math

import numpy as np
import pytest

from sift_ds.study.analysis import Curve
from sift_ds.study.frontier import BOUND_ABOVE, BOUND_BELOW, INSIDE, analyze, frontier, frontier_cost, finals


def run(samples, seconds, loss, acc):
    """A run whose curve ends at (samples, seconds) with final val_loss ``loss`` and val_acc ``acc``
    (two evaluations; only the last counts here)."""
    return Curve(np.array([samples / 2, samples]), np.array([seconds / 2, seconds]),
                 np.array([loss + 1.0, loss]), np.array([acc / 2, acc]), 0.0, {})


# Vanilla at 400 / 600 / 900 steps of 16 rows: 6400 / 9600 / 14400 samples, 1 s per 100 samples.
VANILLA = {
    "vanilla_max_steps-400": [run(6400, 64, 5.40, 0.180), run(6400, 66, 5.42, 0.182)],   # means 5.41, .181, 65 s
    "vanilla": [run(9600, 96, 5.30, 0.190), run(9600, 98, 5.32, 0.192)],                 # 5.31, .191, 97 s
    "vanilla_max_steps-900": [run(14400, 144, 5.20, 0.200), run(14400, 146, 5.22, 0.202)],  # 5.21, .201, 145 s
}
LABELS = list(VANILLA)


def test_frontier_is_sorted_by_budget_and_monotone():
    budgets = [finals(VANILLA[k]) for k in ("vanilla", "vanilla_max_steps-900", "vanilla_max_steps-400")]
    front = frontier(budgets)
    assert front.cost["samples"].tolist() == [6400, 9600, 14400]
    assert front.cost["time"].tolist() == [65, 97, 145]
    assert np.allclose(front.value["loss"], [5.41, 5.31, 5.21]) and np.allclose(front.value["acc"], [.181, .191, .201])
    # A larger budget that ends worse (seed noise) does not bend the frontier back.
    noisy = [finals([run(6400, 64, 5.4, .18)]), finals([run(9600, 96, 5.3, .19)]), finals([run(14400, 144, 5.35, .185)])]
    front = frontier(noisy)
    assert front.value["loss"].tolist() == [5.4, 5.3, 5.3] and front.value["acc"].tolist() == [.18, .19, .19]


def test_interpolated_speedup_inside_the_frontier():
    # SIFT at 600 steps (9600 samples, 120 s, selection costs) ends at 5.26: halfway between vanilla's
    # 600 (5.31) and 900 (5.21) budgets -> vanilla needs 12000 samples / 121 s to get there.
    sift = [run(9600, 118, 5.25, 0.1955), run(9600, 122, 5.27, 0.1965)]
    study = analyze({**VANILLA, "entropy-exit1": sift}, LABELS, n_boot=200)
    assert study.frontier_labels == ["vanilla_max_steps-400", "vanilla", "vanilla_max_steps-900"]
    m = study.arms["entropy-exit1"]
    loss_s, loss_t = m[("loss", "samples")], m[("loss", "time")]
    assert loss_s.where == INSIDE and loss_s.speedup == pytest.approx(12000 / 9600)
    assert loss_s.frontier_cost == pytest.approx(12000) and loss_s.arm_cost == 9600
    assert loss_t.speedup == pytest.approx(121 / 120)
    # Accuracy .196 is halfway between .191 and .201 as well.
    assert m[("acc", "samples")].speedup == pytest.approx(1.25)
    # Per seed: 5.25 -> 9600 + 0.6 * 4800 = 12480; 5.27 -> 9600 + 0.4 * 4800 = 11520.
    assert m[("loss", "samples")].seeds == pytest.approx((12480 / 9600, 11520 / 9600))
    lo, hi = loss_s.interval
    assert lo <= loss_s.speedup <= hi and lo < hi
    assert "vanilla" not in study.arms  # the frontier's own arms are not compared with themselves


def test_off_the_frontier_is_a_bound_never_an_extrapolation():
    better = [run(9600, 100, 5.10, 0.21)]   # beats the largest budget: speed-up at least 14400 / 9600
    worse = [run(9600, 100, 5.50, 0.17)]    # worse than the smallest: at most 6400 / 9600
    study = analyze({**VANILLA, "better": better, "worse": worse}, LABELS, n_boot=50)
    b, w = study.arms["better"][("loss", "samples")], study.arms["worse"][("acc", "samples")]
    assert (b.where, b.speedup) == (BOUND_ABOVE, pytest.approx(1.5))
    assert (w.where, w.speedup) == (BOUND_BELOW, pytest.approx(6400 / 9600))
    assert study.arms["better"][("loss", "time")].speedup == pytest.approx(145 / 100)


def test_frontier_cost_at_a_budget_point_and_flat_segments():
    front = frontier([finals([run(100, 1, 3.0, .1)]), finals([run(200, 2, 2.0, .2)]), finals([run(300, 3, 2.0, .2)])])
    assert frontier_cost(front, "loss", "samples", 2.0) == (200.0, INSIDE)  # the first budget that reaches it
    assert frontier_cost(front, "loss", "samples", 2.5) == (150.0, INSIDE)
    assert frontier_cost(front, "acc", "time", 0.15) == (1.5, INSIDE)


def test_fewer_than_two_budgets_is_no_frontier_and_equal_budgets_are_refused():
    assert analyze({"vanilla": VANILLA["vanilla"], "x": VANILLA["vanilla"]}, ["vanilla"]) is None
    with pytest.raises(ValueError, match="budgets must differ"):
        frontier([finals(VANILLA["vanilla"]), finals(VANILLA["vanilla"])])


def test_bootstrap_interval_is_degenerate_when_seeds_agree():
    same = {k: [v[0], v[0]] for k, v in VANILLA.items()}
    sift = [run(9600, 120, 5.26, 0.196)] * 3
    m = analyze({**same, "s": sift}, LABELS, n_boot=100).arms["s"][("loss", "samples")]
    # vanilla seed 0 only: 5.40 / 5.30 / 5.20 -> 5.26 at 9600 + 0.4 * 4800 = 11520
    assert m.speedup == pytest.approx(11520 / 9600) and m.interval == pytest.approx((m.speedup, m.speedup))
    assert not math.isnan(m.interval[0])
