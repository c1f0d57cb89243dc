"""launch/horizon.py and sift_ds.study.horizon: one compare.py study per horizon gathered into the
saving-against-length table, the weighted trend (checked against scipy's curve_fit) and the plot."""
import csv
import json
import math
import os

import numpy as np
import pytest
from scipy.optimize import curve_fit

from launch_helpers import load_cli
from sift_ds.study import horizon
from sift_ds.study.analysis import AXES, METRICS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_STUDY = os.path.join(REPO, "docs", "results", "budget_l4h128")


def write_study(root, steps, savings, seq_len=128, rows=16, epoch=0, seeds=3):
    """A finished compare.py study as horizon.py reads it: results.csv (vanilla rows without a
    budget-matched figure) and a finished vanilla run. ``savings``: arm -> (value, lo, hi, bound)."""
    run = os.path.join(root, "runs", "vanilla", "seed0")
    os.makedirs(run)
    open(os.path.join(run, "DONE"), "w").close()
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": steps // 2, "samples": steps // 2 * rows, "epoch": 0}) + "\n")
        f.write(json.dumps({"step": steps, "samples": steps * rows, "epoch": epoch}) + "\n")
    with open(os.path.join(run, "run_config.json"), "w") as f:
        json.dump({"options": {"seq_len": seq_len}}, f)
    figures = [f"budget_matched_{m}_{a}" for m in METRICS for a in AXES]
    columns = ["arm", "seeds"] + [c + s for c in figures for s in ("", "_bound", "_ci_lo", "_ci_hi")]
    with open(os.path.join(root, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerow({"arm": "vanilla", "seeds": seeds})
        for arm, (value, lo, hi, bound) in savings.items():
            row = {"arm": arm, "seeds": seeds}
            for c in figures:
                row.update({c: value, c + "_bound": bound, c + "_ci_lo": lo, c + "_ci_hi": hi})
            w.writerow(row)
    return str(root)


def line(tokens, a=1.1, b=0.05):
    return a + b * math.log10(tokens)


def test_reads_a_real_compare_study_tokens_and_savings():
    h = horizon.read_horizon(BUDGET_STUDY)
    assert h.steps == 600 and h.tokens == 600 * 16 * 128 and h.max_epoch == 0
    with open(os.path.join(BUDGET_STUDY, "results.csv")) as f:
        row = next(r for r in csv.DictReader(f) if r["arm"] == "entropy-exit1")
    p = h.points["entropy-exit1"][("loss", "samples")]
    assert (p.saving, p.lo, p.hi) == (float(row["budget_matched_loss_samples"]),
                                      float(row["budget_matched_loss_samples_ci_lo"]),
                                      float(row["budget_matched_loss_samples_ci_hi"]))
    assert "vanilla" not in h.points and "vanilla_max_steps-900" not in h.points and h.seeds["entropy-exit1"] == 3


def test_fit_matches_scipy_weighted_least_squares(tmp_path):
    steps = (600, 2400, 4800)
    values = {600: (1.18, 1.08, 1.25), 2400: (1.22, 1.15, 1.31), 4800: (1.21, 1.17, 1.24)}
    hs = [horizon.read_horizon(write_study(tmp_path / str(s), s, {"entropy": (*values[s], "")})) for s in steps]
    trend = horizon.fit(hs, "entropy", ("loss", "samples"))
    x = np.log10([s * 16 * 128 for s in steps])
    y = np.array([values[s][0] for s in steps])
    sigma = np.array([(values[s][2] - values[s][1]) / (2 * 1.959963984540054) for s in steps])
    params, cov = curve_fit(lambda t, a, b: a + b * t, x, y, sigma=sigma, absolute_sigma=True)
    assert (trend.intercept, trend.slope) == pytest.approx(tuple(params), rel=1e-6)  # curve_fit iterates
    np.testing.assert_allclose(trend.cov, cov, rtol=1e-6)
    target = 1e11
    value, lo, hi = trend.at(target)
    sd = math.sqrt(np.array([1, 11.0]) @ cov @ np.array([1, 11.0]))
    assert value == pytest.approx(params[0] + 11 * params[1]) and hi - lo == pytest.approx(2 * 1.959963984540054 * sd)


def test_a_noiseless_line_is_recovered_and_bounds_are_left_out(tmp_path):
    steps = (600, 2400, 4800, 9600)
    savings = {s: (line(s * 16 * 128), line(s * 16 * 128) - 0.1, line(s * 16 * 128) + 0.1, "") for s in steps}
    savings[9600] = (3.0, 2.0, 4.0, ">")  # off the frontier: a bound, not a point of the line
    hs = [horizon.read_horizon(write_study(tmp_path / str(s), s, {"a": savings[s]})) for s in steps]
    trend = horizon.fit(hs, "a", ("acc", "time"))
    assert trend.n == 3 and trend.slope == pytest.approx(0.05) and trend.at(1e11)[0] == pytest.approx(line(1e11))
    assert horizon.fit(hs[:1] + hs[3:], "a", ("acc", "time")) is None  # one inside point: no line
    text = horizon.table(hs, 1e11)
    assert ">3" in text and f"{line(600 * 16 * 128):.2f} [" in text and "+0.050" in text


def test_cli_writes_the_report_and_the_plot_and_refuses_bad_input(tmp_path, capsys):
    studies = [write_study(tmp_path / f"h{s}", s, {"entropy-exit1": (1.2, 1.1, 1.3, "")}, epoch=s // 4800)
               for s in (600, 4800)]
    script = os.path.join(REPO, "launch", "horizon.py")
    out = tmp_path / "out"
    cli = load_cli(script)  # its main in process, as its command line calls it
    capsys.readouterr()
    assert cli.main([*map(str, studies), "--out", str(out)]) == 0
    assert "| 600 steps |" in capsys.readouterr().out  # the table, printed
    report = (out / "horizon.md").read_text()
    assert "| 600 steps | entropy-exit1 3 | 0 |" in report and "| 4800 steps | entropy-exit1 3 | 1 |" in report
    assert "a model" in report and os.path.getsize(out / "plots" / "horizon.png") > 10_000
    # the refusals: exit status 2 and one line, no traceback
    for argv, message in [([str(tmp_path / "none")], "results.csv: no such file"),
                          ([studies[0], studies[0]], "two studies have the same horizon"),
                          ([studies[0], "--target_tokens", "0"], "--target_tokens must be positive")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            cli.main([*argv, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and message in err.splitlines()[-1] and "Traceback" not in err, err


def test_one_seed_shows_no_interval_and_stays_out_of_the_trend(tmp_path):
    """One seed gives a degenerate bootstrap interval: shown as such, and not a point of the line."""
    hs = [horizon.read_horizon(write_study(tmp_path / "a", 600, {"e": (1.1, 1.0, 1.2, "")})),
          horizon.read_horizon(write_study(tmp_path / "b", 2400, {"e": (1.3, 1.2, 1.4, "")})),
          horizon.read_horizon(write_study(tmp_path / "c", 4800, {"e": (1.6, 1.6, 1.6, "")}, seeds=1))]
    trend = horizon.fit(hs, "e", ("loss", "samples"))
    assert trend.n == 2 and trend.slope == pytest.approx(0.2 / math.log10(4))
    assert "1.60 (1 seed)" in horizon.table(hs, 1e11)


def band_contains_one(trend, x):
    """float64 reference: does the line's 95% band at log10(tokens) = x contain a saving of 1?"""
    design = np.stack([np.ones_like(x), x], axis=1)
    value = design @ np.array([trend.intercept, trend.slope], dtype=np.float64)
    sd = np.sqrt(np.einsum("ni,ij,nj->n", design, trend.cov, design))
    return np.abs(value - 1.0) <= 1.959963984540054 * sd


def test_break_even_horizon_and_its_interval_match_a_grid_search(tmp_path):
    """Where the saving reaches 1: the line's own root, and Fieller's interval against a dense float64
    scan of where the 95% band contains 1."""
    steps = (600, 2400, 4800)
    values = {600: (1.26, 1.20, 1.31), 2400: (1.20, 1.13, 1.27), 4800: (1.05, 0.99, 1.10)}
    hs = [horizon.read_horizon(write_study(tmp_path / str(s), s, {"e": (*values[s], "")})) for s in steps]
    trend = horizon.fit(hs, "e", ("acc", "samples"))
    point, lo, hi = trend.break_even()
    assert trend.at(point)[0] == pytest.approx(1.0, abs=1e-9)
    x = np.linspace(4.0, 12.0, 800_001)
    inside = x[band_contains_one(trend, x)]
    assert inside.size and np.all(np.diff(inside) < 2e-5)  # one interval inside the scanned range
    assert math.log10(lo) == pytest.approx(inside[0], abs=2e-5) and math.log10(hi) == pytest.approx(inside[-1], abs=2e-5)
    assert lo < point < hi
    assert f"falls to 1 at {point:.2g} [{lo:.2g}..{hi:.2g}]" in horizon.table(hs, 1e11)


def test_break_even_is_unbounded_when_the_slope_is_not_told_apart_from_zero(tmp_path):
    steps = (600, 4800)
    hs = [horizon.read_horizon(write_study(tmp_path / str(s), s, {"e": v}))
          for s, v in zip(steps, [(1.20, 0.90, 1.50, ""), (1.15, 0.85, 1.45, "")])]
    trend = horizon.fit(hs, "e", ("loss", "time"))
    slope_lo, slope_hi = trend.slope_interval()
    assert slope_lo < 0 < slope_hi
    point, lo, hi = trend.break_even()
    assert trend.at(point)[0] == pytest.approx(1.0, abs=1e-9) and (lo, hi) == (0.0, math.inf)
    assert f"falls to 1 at {point:.2g} [unbounded" in horizon.table(hs, 1e11)
    # a line below 1 and rising is said the other way round; a crossing before the shortest horizon as such
    rising = [horizon.read_horizon(write_study(tmp_path / f"r{s}", s, {"e": v}))
              for s, v in zip(steps, [(0.80, 0.78, 0.82, ""), (0.90, 0.88, 0.92, "")])]
    r_point = horizon.fit(rising, "e", ("loss", "samples")).break_even()[0]
    assert r_point > 4800 * 16 * 128 and f"rises to 1 at {r_point:.2g} [" in horizon.table(rising, 1e11)
    falling_below = [horizon.read_horizon(write_study(tmp_path / f"b{s}", s, {"e": v}))
                     for s, v in zip(steps, [(0.95, 0.93, 0.97, ""), (0.90, 0.88, 0.92, "")])]
    assert "below 1 from the shortest horizon on" in horizon.table(falling_below, 1e11)
    flat = [horizon.read_horizon(write_study(tmp_path / f"f{s}", s, {"e": (1.2, 1.1, 1.3, "")})) for s in steps]
    assert "never (a flat line)" in horizon.table(flat, 1e11)


def test_an_extrapolation_below_zero_is_said_to_have_left_the_range_of_a_saving(tmp_path):
    steps = (600, 4800)
    hs = [horizon.read_horizon(write_study(tmp_path / str(s), s, {"e": v}))
          for s, v in zip(steps, [(0.90, 0.88, 0.92, ""), (0.30, 0.28, 0.32, "")])]
    # the line through the two points, by hand: it is below 0 long before 1e11 tokens
    t0, t1 = (s * 16 * 128 for s in steps)
    slope = (0.30 - 0.90) / (math.log10(t1) - math.log10(t0))
    expected = 0.30 + slope * (math.log10(1e11) - math.log10(t1))
    assert expected < 0 and horizon.fit(hs, "e", ("loss", "samples")).at(1e11)[0] == pytest.approx(expected)
    row = next(r for r in horizon.table(hs, 1e11).splitlines() if r.startswith("| e | samples at equal val loss | 2 |"))
    assert f"{expected:.2f} [" in row and "below 0, past where a straight line can stand for a saving" in row
    assert "below 0" not in horizon.table([horizon.read_horizon(write_study(tmp_path / f"p{s}", s, {"e": (1.1, 1.0, 1.2, "")}))
                                           for s in steps], 1e11)
