"""Real DeepSpeed runs (CPU, gloo) of a tiny BERT with SIFT: 2 ranks x ZeRO 1/2/3 x fp32/bf16 x local/global,
the entropy criterion under ZeRO-0, and the global scope on 4 ranks under ZeRO-1 and ZeRO-3. Runs that
need the same number of ranks share a launch (tests/dist_scripts/sift_train.py), read by the tests of
each. Every 2-rank run also checks its telemetry windows (``engine.read_stats()``) against
an average of the ranks' own per-step scores and kept rows over the window's micro-steps and both ranks."""
import json
import math
import os
import time

import pytest

from launcher import REPO, requires_cuda, run_deepspeed
from process_guard import shm_buffers

SCRIPT = os.path.join(REPO, "tests", "dist_scripts", "sift_train.py")


def launch(tmp_path, *extra, ranks=2):
    start = time.time() - 1.0
    run_deepspeed(SCRIPT, ["--out", tmp_path, *extra], num_gpus=ranks)
    assert shm_buffers(since=start) == []  # sift_ds.initialize removed DeepSpeed's /dev/shm files
    return [json.load(open(tmp_path / f"rank{r}.json")) for r in range(ranks)]


# Two launches that several tests read: the 2-rank runs (ZeRO 1, 2 and 3, the ZeRO-3 vanilla control, the
# ZeRO-0 entropy run) and the 4-rank runs.
SHARED = {"two_ranks": (["--zero", "1,2,3", "--vanilla_control", "--also", "0:entropy:16"], 2),
          "four_ranks": (["--zero", 1, "--dtypes", "fp32", "--scopes", "global", "--steps", 6, "--also", "3:loss:6"], 4)}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """launch(...) of a SHARED entry, once per module."""
    done = {}

    def get(name):
        if name not in done:
            extra, ranks = SHARED[name]
            done[name] = launch(tmp_path_factory.mktemp(name), *extra, ranks=ranks)
        return done[name]
    return get


def pooled_windows(rank_results, name, micro_steps):
    """The sift/* means of each telemetry window (``micro_steps`` micro-steps), pooled over its
    micro-steps and every rank, from the per-step scores and kept rows the ranks recorded (float64)."""
    per_rank = [res[name]["selections"] for res in rank_results]
    windows = []
    for first in range(0, len(per_rank[0]), micro_steps):
        sums = {k: [0.0, 0.0] for k in ("kept", "dropped", "nonfinite", "fraction", "warmup", "ratio")}
        for selections in per_rank:
            for sel in selections[first:first + micro_steps]:
                for score, kept in zip(sel["scores"], sel["kept"]):
                    if math.isfinite(score):
                        sums["kept" if kept else "dropped"][0] += score
                        sums["kept" if kept else "dropped"][1] += 1
                    elif sel["by_score"]:
                        sums["nonfinite"][0] += 1
                sums["fraction"][0] += sum(sel["kept"])
                sums["fraction"][1] += len(sel["kept"])
                for key, value in (("nonfinite", 0), ("warmup", not sel["by_score"]), ("ratio", sel["keep_ratio"])):
                    sums[key][0] += value
                    sums[key][1] += 1
        windows.append({f"sift/{key}": total / count if count else math.nan for key, (total, count) in (
            ("score_kept_mean", sums["kept"]), ("score_dropped_mean", sums["dropped"]),
            ("nonfinite_scores", sums["nonfinite"]), ("kept_fraction", sums["fraction"]),
            ("warmup", sums["warmup"]), ("keep_ratio", sums["ratio"]))})
    return windows


def check_windows(rank_results, name):
    """Each logged telemetry window equals the independent average over its micro-steps and both ranks."""
    want = pooled_windows(rank_results, name, 2 * 2)  # sift_train.py: 2 optimizer steps x 2 micro-steps
    scored = [[s["scores"] for s in res[name]["selections"] if s["by_score"]] for res in rank_results]
    assert scored[0][0] != scored[1][0], "the ranks scored the same rows"
    for res in rank_results:
        got = res[name]["windows"]
        assert len(got) == len(want) == len(res[name]["selections"]) // 4
        for w, (g, e) in enumerate(zip(got, want)):
            for key, value in e.items():
                assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (name, w, key)
            assert g["sift/selection_time_s"] > 0 and 0 < g["sift/selection_share"] < 1, (name, w)


def check_run(rank_results, name, zero):
    for res in rank_results:
        rec = res[name]
        assert set(rec["rows"]) == {4}, "every rank trains on exactly micro-batch rows"
        assert rec["warmup"][:4] == [True] * 4 and not any(rec["warmup"][4:]), "warm-up = 2 optimizer steps x 2 micro-steps"
        n = len(rec["losses"])
        first, last = sum(rec["losses"][: n // 4]) / (n // 4), sum(rec["losses"][-n // 4:]) / (n // 4)
        assert last < first - 0.1, f"{name}: training loss did not fall ({first:.3f} -> {last:.3f})"
        assert rec["eval_loss_end"] < rec["eval_loss_start"] - 0.15, f"{name}: eval loss did not fall"
        tol = 1e-4 if "fp32/" in name else 1e-2
        assert rec["score_max_abs_err"] < tol, f"{name}: early-exit scores differ from a direct HF forward"
        if name.endswith("global"):
            assert rec["global_agree"] and all(rec["global_agree"]), "ranks disagree on the global selection"
            assert all(rec["global_is_topk"]), "global selection is not the top-k of all ranks' scores"
            assert all(rec["rows_match"]), "a rank did not receive the rows of its Selection.trained indices"
        if zero == 3:
            assert rec["zero3_trace_complete"], "ZeRO-3 module trace not complete: prefetching is off"
            assert rec["zero3_invalidations_after_warmup"] == 0, "selection pass invalidated ZeRO-3's trace"
        stats = rec["stats"]
        assert stats["sift/warmup"] == 0.0 and stats["sift/score_kept_mean"] >= stats["sift/score_dropped_mean"]
    if len(rank_results) == 2:
        check_windows(rank_results, name)
    if name.endswith("local"):
        assert rank_results[0][name]["losses"] != rank_results[1][name]["losses"]


RUNS = ("fp32/local", "fp32/global", "bf16/local", "bf16/global")


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_two_rank_sift_training(shared, zero):
    results = shared("two_ranks")
    for name in RUNS:
        check_run(results, f"zero{zero}/{name}", zero)
    if zero == 3:
        # Prefetching measured: SIFT's modules fetch on demand no more parameters per step than a
        # vanilla ZeRO-3 run of the same model does (the selection pass gathers its own, outside the trace).
        for res in results:
            assert res["zero3/vanilla/local"]["zero3_demand_fetch_numel_total"] > 0  # the counter does count
            vanilla = res["zero3/vanilla/local"]["zero3_demand_fetch_numel_per_step"]
            for name in RUNS:
                assert res[f"zero3/{name}"]["zero3_demand_fetch_numel_per_step"] <= vanilla, name


@pytest.mark.parametrize("zero", [1, 3])
def test_four_rank_global_selection(shared, zero):
    """Every one of 4 ranks keeps the same top-(4 x micro) of all ranks' gathered scores and trains on
    the rows its Selection.trained names (surplus rows move between ranks); the scores equal a direct HF forward."""
    results = shared("four_ranks")
    for rank, res in enumerate(results):
        rec = res["zero1/fp32/global" if zero == 1 else "zero3-loss/fp32/global"]
        assert set(rec["rows"]) == {4}, rank
        assert len(rec["global_agree"]) == 2 * (6 - 2), rank  # every micro-step after the warm-up was checked
        assert all(rec["global_agree"]) and all(rec["global_is_topk"]) and all(rec["rows_match"]), rank
        assert rec["score_max_abs_err"] < 1e-4, rank
        if zero == 3:
            assert rec["zero3_trace_complete"] and rec["zero3_invalidations_after_warmup"] == 0, rank


def test_two_rank_entropy_global_stage0(shared):
    check_run(shared("two_ranks"), "zero0-entropy/fp32/global", 0)


@requires_cuda
def test_fp16_single_gpu(tmp_path):  # pragma: no cover - CUDA only
    run_deepspeed(SCRIPT, ["--out", tmp_path, "--zero", 2, "--dtypes", "fp16", "--scopes", "local"], num_gpus=1)
    rec = json.load(open(tmp_path / "rank0.json"))["fp16/local"]
    assert set(rec["rows"]) == {4} and rec["eval_loss_end"] < rec["eval_loss_start"] - 0.15
    assert rec["score_max_abs_err"] < 1e-2
