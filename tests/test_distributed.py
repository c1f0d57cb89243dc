"""Real DeepSpeed runs (CPU, gloo) of a tiny BERT with SIFT: 2 ranks x ZeRO 1/2/3 x fp32/bf16 x local/global,
the entropy criterion under ZeRO-0, and the global scope on 4 ranks under ZeRO-1 and ZeRO-3. Runs that
need the same number of ranks share a launch (tests/dist_scripts/sift_train.py --also), read by the
tests of each."""
import json
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


# Two launches that several tests read: ZeRO-1 with the ZeRO-0 entropy run, and the 4-rank runs.
SHARED = {"zero1": (["--zero", 1, "--also", "0:entropy:16"], 2),
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


def check_run(rank_results, name, zero):
    for res in rank_results:
        rec = res[name]
        assert set(rec["rows"]) == {4}, "every rank trains on exactly micro-batch rows"
        assert rec["warmup"][:4] == [True] * 4 and not any(rec["warmup"][4:]), "warm-up = 2 optimizer steps x 2 micro-steps"
        n = len(rec["losses"])
        first, last = sum(rec["losses"][: n // 4]) / (n // 4), sum(rec["losses"][-n // 4:]) / (n // 4)
        assert last < first - 0.1, f"{name}: training loss did not fall ({first:.3f} -> {last:.3f})"
        assert rec["eval_loss_end"] < rec["eval_loss_start"] - 0.15, f"{name}: eval loss did not fall"
        tol = 1e-4 if name.startswith("fp32") else 1e-2
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
    if name.endswith("local"):
        assert rank_results[0][name]["losses"] != rank_results[1][name]["losses"]


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_two_rank_sift_training(tmp_path, shared, zero):
    results = shared("zero1") if zero == 1 else launch(tmp_path, "--zero", zero,
                                                       *(["--vanilla_control"] if zero == 3 else []))
    for name in ("fp32/local", "fp32/global", "bf16/local", "bf16/global"):
        check_run(results, name, zero)
    if zero == 3:
        # Prefetching measured: SIFT's modules fetch on demand no more parameters per step than a
        # vanilla ZeRO-3 run of the same model does (the selection pass gathers its own, outside the trace).
        for res in results:
            assert res["vanilla/local"]["zero3_demand_fetch_numel_total"] > 0  # the counter does count
            vanilla = res["vanilla/local"]["zero3_demand_fetch_numel_per_step"]
            for name in ("fp32/local", "fp32/global", "bf16/local", "bf16/global"):
                assert res[name]["zero3_demand_fetch_numel_per_step"] <= vanilla, name


@pytest.mark.parametrize("zero", [1, 3])
def test_four_rank_global_selection(shared, zero):
    """Every one of 4 ranks keeps the same top-(4 x micro) of all ranks' gathered scores and trains on
    the rows its Selection.trained names (surplus rows move between ranks); the scores equal a direct HF forward."""
    results = shared("four_ranks")
    for rank, res in enumerate(results):
        rec = res["fp32/global" if zero == 1 else "zero3-loss/fp32/global"]
        assert set(rec["rows"]) == {4}, rank
        assert len(rec["global_agree"]) == 2 * (6 - 2), rank  # every micro-step after the warm-up was checked
        assert all(rec["global_agree"]) and all(rec["global_is_topk"]) and all(rec["rows_match"]), rank
        assert rec["score_max_abs_err"] < 1e-4, rank
        if zero == 3:
            assert rec["zero3_trace_complete"] and rec["zero3_invalidations_after_warmup"] == 0, rank


def test_two_rank_entropy_global_stage0(shared):
    check_run(shared("zero1"), "zero0-entropy/fp32/global", 0)


@requires_cuda
def test_fp16_single_gpu(tmp_path):  # pragma: no cover - CUDA only
    run_deepspeed(SCRIPT, ["--out", tmp_path, "--zero", 2, "--dtypes", "fp16", "--scopes", "local"], num_gpus=1)
    rec = json.load(open(tmp_path / "rank0.json"))["fp16/local"]
    assert set(rec["rows"]) == {4} and rec["eval_loss_end"] < rec["eval_loss_start"] - 0.15
    assert rec["score_max_abs_err"] < 1e-2
