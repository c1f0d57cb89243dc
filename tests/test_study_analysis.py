"""sift_ds.study: arm specs, and the curve statistics (targets, interpolated crossings, speed-up
ratios, bootstrap intervals, the vanilla noise yardstick) on synthetic curves whose answers are
known in closed form."""
import json
import math

import numpy as np
import pytest

from sift_ds.study.analysis import Curve, analyze, crossing, curve, dedupe, position, spread
from sift_ds.study.arms import check_arms, load_arms_file, parse_arm, parse_arms

POINTS = np.array([300.0, 600.0, 900.0, 1200.0])  # backprop samples at the evaluations


def linear(loss0, loss_slope, acc_slope=None, seconds_per_sample=1.0, share=None):
    """A run whose val_loss = loss0 - loss_slope * samples and val_acc = acc_slope * samples."""
    acc_slope = loss_slope / 24 if acc_slope is None else acc_slope
    return Curve(POINTS, POINTS * seconds_per_sample, loss0 - loss_slope * POINTS, acc_slope * POINTS, share,
                 {"probe/spearman": 0.5, "probe/top_half_overlap": 0.75})


# ------------------------------------------------------------------ interpolation and crossings
def test_crossing_interpolates_between_evaluations():
    assert crossing([1.0, 0.0], 0.25) == (1, 0.75)
    assert position([0.0, 100.0], crossing([1.0, 0.0], 0.25)) == 75.0
    assert position([10.0, 20.0, 30.0], crossing([0.1, 0.2, 0.6], 0.4, lower=False)) == 25.0  # accuracy rises
    assert position([10.0, 20.0], crossing([0.5, 0.4], 0.6)) == 10.0  # already there at the first evaluation
    assert crossing([3.0, 2.0, 1.0], 0.5) is None and position([1, 2, 3], None) == math.inf
    assert position([10.0, 20.0, 30.0, 40.0], crossing([3.0, 1.0, 2.0, 0.0], 2.0)) == 15.0  # the first crossing counts


def test_dedupe_keeps_the_last_record_of_each_step():
    records = [{"step": s, "v": "old"} for s in (10, 20, 30)] + [{"step": s, "v": "new"} for s in (20, 30, 40)]
    assert [(r["step"], r["v"]) for r in dedupe(records)] == [(10, "old"), (20, "new"), (30, "new"), (40, "new")]


def test_curve_from_records_after_a_resume():
    rec = lambda step, loss, warm, share, elapsed: {  # noqa: E731
        "step": step, "samples": step * 32, "elapsed_s": elapsed, "val_loss": loss,
        "val_acc": None if loss is None else 0.1,
        "sift/warmup": warm, "sift/selection_share": share}
    records = [rec(10, None, 1.0, 0.9, 1.0), rec(20, 5.0, 0.0, 0.2, 2.0), rec(30, None, 0.0, 0.4, 3.0),
               rec(20, 4.0, 0.0, 0.2, 2.5), rec(30, None, 0.0, 0.4, 3.5), rec(40, 3.0, 0.0, 0.3, 4.5)]
    c = curve(records)
    assert c.samples.tolist() == [640.0, 1280.0] and c.val_loss.tolist() == [4.0, 3.0]
    assert c.elapsed.tolist() == [2.5, 4.5]
    assert c.selection_share == pytest.approx(0.3)  # warm-up record left out: (0.2 + 0.4 + 0.3) / 3
    vanilla = [dict(r, **{"sift/warmup": 1.0}) for r in records]  # a run that never selects
    assert curve(vanilla).selection_share == 0.0
    assert math.isnan(c.probe["probe/spearman"])  # no probe in these records
    probed = records + [dict(rec(50, 2.0, 0.0, 0.3, 5.0), **{"probe/spearman": 0.8, "probe/top_half_overlap": 0.7}),
                        dict(rec(60, 1.0, 0.0, 0.3, 6.0), **{"probe/spearman": 0.6, "probe/top_half_overlap": 0.9}),
                        dict(rec(5, None, 1.0, 0.0, 0.5), **{"probe/spearman": -1.0})]  # warm-up: left out
    assert curve(probed).probe == {"probe/spearman": pytest.approx(0.7), "probe/top_half_overlap": pytest.approx(0.8)}


def test_the_nsp_figures_of_the_final_evaluation_reach_the_report():
    """mlm+nsp runs: the last evaluation's NSP loss and accuracy go into results.md (mean ± std over
    seeds [min..max]) and results.csv; runs without them add nothing."""
    from sift_ds.study import report

    def run(acc, loss):
        records = [{"step": s, "samples": s * 16, "elapsed_s": s / 10, "val_loss": 6.0 - s / 100, "val_acc": s / 1000,
                    "val_nsp_acc": acc - 0.1, "val_nsp_loss": loss + 0.1} for s in (10, 20)]
        records[-1].update(val_nsp_acc=acc, val_nsp_loss=loss)
        return curve(records + [{"step": 25, "samples": 400, "elapsed_s": 2.5}])  # a training record after it
    curves = {"vanilla": [run(0.7, 0.5), run(0.8, 0.4)], "distilled": [run(0.9, 0.3), run(0.9, 0.3)]}
    assert curves["vanilla"][0].extras == {"val_nsp_loss": 0.5, "val_nsp_acc": 0.7}
    lines = report.extras_markdown(curves)
    assert "| vanilla | 0.45 ± 0.071 [0.4..0.5] | 0.75 ± 0.071 [0.7..0.8] |" in lines
    assert "| distilled | 0.3 ± 0 [0.3..0.3] | 0.9 ± 0 [0.9..0.9] |" in lines
    assert report.extras_markdown({"vanilla": [linear(6.0, 0.001)]}) == []
    study = analyze(curves, n_boot=10)
    rows = {r["arm"]: r for r in report.csv_rows(study, {"vanilla": [0, 1], "distilled": [0, 1]}, None, curves)}
    assert rows["vanilla"]["final_val_nsp_acc_mean"] == pytest.approx(0.75)
    assert rows["distilled"]["final_val_nsp_loss_mean"] == pytest.approx(0.3)


def test_spread_of_seeds():
    s = spread([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.lo, s.hi, s.n, s.total) == (2.0, 1.0, 1.0, 3.0, 3, 3)
    t = spread([2.0, math.inf])
    assert (t.mean, t.lo, t.hi, t.n, t.total) == (math.inf, 2.0, math.inf, 1, 2)


# ------------------------------------------------------------------ speed-ups
def result(study, label):
    return next(a for a in study.arms if a.label == label)


def test_arm_twice_as_fast_gives_ratio_two():
    # vanilla reaches loss 0 / acc 0.5 at 1200 samples; the arm at 600 (an evaluation point),
    # but each of its samples costs 1.25x the time: wall-clock speed-up 2 / 1.25 = 1.6.
    study = analyze({"vanilla": [linear(12, 0.01)] * 3, "fast": [linear(12, 0.02, 0.5 / 600, 1.25)] * 3}, n_boot=200)
    assert study.targets == {"loss": 0.0, "acc": pytest.approx(0.5)}
    fast, van = result(study, "fast"), result(study, "vanilla")
    assert fast.to_target[("loss", "samples")].mean_curve == 600.0
    assert fast.to_target[("loss", "samples")].speedup == 2.0
    assert fast.to_target[("loss", "time")].speedup == 1.6
    assert fast.to_target[("acc", "samples")].speedup == pytest.approx(2.0)
    assert fast.to_target[("acc", "time")].speedup == pytest.approx(1.6)
    assert van.to_target[("loss", "samples")].speedup == 1.0 and van.to_target[("loss", "samples")].mean_curve == 1200
    # identical seeds: every resample is the same, a zero-width interval at the point estimate
    assert fast.to_target[("loss", "samples")].interval == (2.0, 2.0)
    assert fast.to_target[("loss", "time")].interval == (1.6, 1.6)
    assert fast.final["loss"].mean == -12.0 and fast.final["loss"].std == 0.0


def test_crossing_between_evaluations_is_interpolated():
    # loss 12 - 0.015 s reaches 0 at s = 800, between the evaluations at 600 and 900: ratio 1200 / 800
    study = analyze({"vanilla": [linear(12, 0.01)], "arm": [linear(12, 0.015)]}, n_boot=50)
    t = result(study, "arm").to_target[("loss", "samples")]
    assert t.mean_curve == pytest.approx(800.0) and t.speedup == pytest.approx(1.5)


def test_arm_that_never_reaches_the_target():
    study = analyze({"vanilla": [linear(12, 0.01)], "slow": [linear(12, 0.005)]}, n_boot=50)
    t = result(study, "slow").to_target[("loss", "samples")]
    assert t.mean_curve == math.inf and t.speedup == 0.0 and t.interval == (0.0, 0.0)
    assert (t.seeds.n, t.seeds.total) == (0, 1)


def test_bootstrap_interval_over_two_different_seeds():
    # arm seeds: loss 10 - 0.02 s (reaches 0 at 500) and 14 - 0.02 s (at 700). A resample of two seeds
    # is {a,a}, {a,b} or {b,b}, its mean curve reaching 0 at 500, 600 or 700: ratios 2.4, 2.0, 1.714...
    study = analyze({"vanilla": [linear(12, 0.01)] * 2, "arm": [linear(10, 0.02), linear(14, 0.02)]},
                    n_boot=2000, seed=3)
    t = result(study, "arm").to_target[("loss", "samples")]
    assert t.speedup == 2.0
    assert t.interval == (pytest.approx(1200 / 700), pytest.approx(2.4))
    assert (t.seeds.lo, t.seeds.hi, t.seeds.n) == (pytest.approx(500.0), pytest.approx(700.0), 2)
    again = analyze({"vanilla": [linear(12, 0.01)] * 2, "arm": [linear(10, 0.02), linear(14, 0.02)]},
                    n_boot=2000, seed=3)
    assert result(again, "arm").to_target[("loss", "samples")].interval == t.interval  # seeded


def test_noise_yardstick_from_the_vanilla_seeds():
    # vanilla seeds end at loss -1, 0, 1: target 0; they reach it at 1100, 1200 and never.
    study = analyze({"vanilla": [linear(11, 0.01), linear(12, 0.01), linear(13, 0.01)]}, n_boot=10)
    assert study.targets["loss"] == pytest.approx(0.0)
    noise = study.noise
    assert noise["final_val_loss_std"] == pytest.approx(1.0)
    assert noise["loss_samples_slowest_over_fastest"] == math.inf
    assert noise["loss_samples_luckiest_seed_speedup"] == pytest.approx(1200 / 1100)
    seeds = result(study, "vanilla").to_target[("loss", "samples")].seeds
    assert (seeds.lo, seeds.hi, seeds.n, seeds.total) == (pytest.approx(1100.0), math.inf, 2, 3)
    two = analyze({"vanilla": [linear(11, 0.01), linear(11.5, 0.01)]}, n_boot=10).noise  # target -0.75: 1175, never
    assert two["loss_samples_luckiest_seed_speedup"] == pytest.approx(1200 / 1175)
    assert analyze({"vanilla": [linear(12, 0.01)] * 2}, n_boot=10).noise["loss_samples_slowest_over_fastest"] == 1.0


def test_equal_sample_points_and_selection_share():
    short = Curve(POINTS[:3], POINTS[:3], 12 - 0.02 * POINTS[:3], POINTS[:3] / 1000, 0.25, {})
    arms = {"vanilla": [linear(12, 0.01, share=0.0)], "sift": [short, linear(12, 0.02, share=0.35)]}
    study = analyze(arms, n_boot=10)
    assert study.points.tolist() == [300.0, 600.0, 900.0]
    arm = result(study, "sift")
    assert [s.mean for s in arm.at_points["loss"]] == pytest.approx([6.0, 0.0, -6.0])
    assert arm.selection_share.mean == pytest.approx(0.3) and result(study, "vanilla").selection_share.mean == 0.0


def test_no_vanilla_arm_is_an_error():
    with pytest.raises(ValueError, match="no arm named 'vanilla'"):
        analyze({"loss-exit1": [linear(12, 0.01)]})


# ------------------------------------------------------------------ arm specs
def test_arm_specs():
    assert parse_arm("vanilla").overrides == ("--sift_enabled", "false")
    arm = parse_arm("loss:1")
    assert arm.label == "loss-exit1"
    assert arm.overrides == ("--sift_enabled", "true", "--sift_criterion", "loss", "--sift_exit_layer", "1")
    arm = parse_arm("loss:1@random_fraction=0.25@keep_ratio=0.5")
    assert arm.overrides[6:] == ("--sift_random_fraction", "0.25", "--sift_keep_ratio", "0.5")
    assert arm.label == "loss-exit1_random_fraction-0.25_keep_ratio-0.5"
    assert [a.label for a in parse_arms("vanilla, entropy:2")] == ["vanilla", "entropy-exit2"]


@pytest.mark.parametrize("spec, message", [
    ("loss", "arm 'loss': expected 'vanilla' or CRITERION:EXIT_LAYER"),
    ("loss:0", "arm 'loss:0'"), ("loss:x", "arm 'loss:x'"), (":1", "arm ':1'"),
    ("loss:1@keep_ratio", "arm 'loss:1@keep_ratio': '@keep_ratio' is not @key=value"),
    ("loss:1@keep ratio=1", "is not @key=value"), ("loss:1@k=", "is not @key=value"),
    ("loss:1@criterion=entropy", "key 'criterion' is set twice"),
    ("loss:1@keep_ratio=0.5@keep_ratio=0.25", "key 'keep_ratio' is set twice"),
])
def test_malformed_arm_specs(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("'", "'")):
        parse_arm(spec)


def test_arm_lists_and_files(tmp_path):
    with pytest.raises(ValueError, match="empty arm"):
        parse_arms("vanilla,,loss:1")
    with pytest.raises(ValueError, match="given twice: loss-exit1"):
        check_arms(parse_arms("vanilla,loss:1,loss:1"))
    with pytest.raises(ValueError, match="no arm named 'vanilla'"):
        check_arms(parse_arms("loss:1"))
    path = tmp_path / "arms.json"
    path.write_text(json.dumps({"vanilla": ["--sift_enabled", "false"],
                                "big-lr": ["--sift_enabled", "true", "--lr", "1"]}))
    arms = load_arms_file(str(path))
    assert [(a.label, a.overrides) for a in arms] == [("vanilla", ("--sift_enabled", "false")),
                                                      ("big-lr", ("--sift_enabled", "true", "--lr", "1"))]
    path.write_text(json.dumps({"a/b": []}))
    with pytest.raises(ValueError, match="label 'a/b' is not filesystem-safe"):
        load_arms_file(str(path))
    path.write_text(json.dumps({"x": "--sift_enabled false"}))
    with pytest.raises(ValueError, match="arm 'x': expected a list of strings"):
        load_arms_file(str(path))
    path.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_arms_file(str(path))
    with pytest.raises(ValueError, match="No such file"):
        load_arms_file(str(tmp_path / "missing.json"))


def test_arm_budgets_and_vanilla_frontier_arms(tmp_path):
    short = parse_arm("vanilla@max_steps=400")
    assert (short.label, short.vanilla, short.max_steps) == ("vanilla_max_steps-400", True, 400)
    assert short.overrides == ("--sift_enabled", "false", "--max_steps", "400") and not short.is_baseline
    sift = parse_arm("entropy:1@anneal_start_step=450@anneal_end_step=600@max_steps=600")
    assert not sift.vanilla and sift.max_steps == 600 and "--sift_anneal_start_step" in sift.overrides
    assert parse_arm("vanilla").vanilla and parse_arm("vanilla").max_steps is None
    path = tmp_path / "arms.json"
    path.write_text(json.dumps({"vanilla": ["--sift_enabled", "false"], "v2": ["--sift_enabled=false", "--max_steps=9"],
                                "s": ["--sift_enabled", "true"],
                                "kd": ["--sift_enabled", "false", "--async_convergence", "{}"]}))
    arms = load_arms_file(str(path))
    assert [(a.vanilla, a.max_steps) for a in arms] == [(True, None), (True, 9), (False, None), (False, None)]


def test_a_moved_study_keeps_its_finished_runs(tmp_path):
    """command.json records compare equal after the study directory and the ds_config move (the
    ds_config known by content), and differ when a setting or the ds_config's content changes."""
    from sift_ds.study import preflight, runs
    arms = [parse_arm("vanilla")]
    config = tmp_path / "a" / "ds.json"
    config.parent.mkdir()
    config.write_text('{"train_micro_batch_size_per_gpu": 2}')
    old = runs.plan(arms, [0], str(tmp_path / "old_out"))
    stamp = runs.record(old[0], old, runs.Settings("job.py", str(config), ["--max_steps", "5"], deepspeed="ds"))
    moved = tmp_path / "b" / "ds.json"
    moved.parent.mkdir()
    moved.write_text(config.read_text())
    new = runs.plan(arms, [0], str(tmp_path / "new_out"))
    same = runs.Settings("job.py", str(moved), ["--max_steps", "5"], deepspeed="ds")
    assert preflight.portable(stamp) == preflight.portable(runs.record(new[0], new, same))
    assert preflight.portable(stamp) != preflight.portable(runs.record(new[0], new, runs.Settings(
        "job.py", str(moved), ["--max_steps", "6"], deepspeed="ds")))
    moved.write_text('{"train_micro_batch_size_per_gpu": 4}')
    assert preflight.portable(stamp) != preflight.portable(runs.record(new[0], new, same))
