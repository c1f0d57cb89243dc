"""sift_ds.megatron on real megatron-core BertModel and GPTModel over gloo: TP=2 on 2 ranks (with and
without sequence parallelism; the masked-positions-only MLM head against the dense vocab-parallel
loss; then PP=2, refused) and TP=2 x DP=2 on 4 ranks. tests/dist_scripts/megatron_sift.py
(and megatron_gpt.py and megatron_state.py, in the same ranks) runs the checks with collectives and
writes per-rank records; this asserts them. At TP=2 a freq_loss run resumed from its checkpoint
(``Sift.state_dict``) trains what the uninterrupted run trained."""
import json
import os
import subprocess
import sys

import pytest

from launcher import REPO, clean_env, free_port

pytest.importorskip("megatron.core", reason="needs the megatron-core test extra")

SCRIPT = os.path.join(REPO, "tests", "dist_scripts", "megatron_sift.py")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def launch(tmp_path, nproc, *extra):
    cmd = [TORCHRUN, "--nproc_per_node", str(nproc), "--master_port", str(free_port()), SCRIPT,
           "--out", str(tmp_path), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-5000:]}\n{proc.stderr[-8000:]}"
    return [json.load(open(tmp_path / f"rank{r}.json")) for r in range(nproc)]


def check(results, tp, dp):
    for r in results:
        assert (r["tp"], r["dp"]) == (tp, dp)
        # k = L: the merged per-token CE is the model's own vocab_parallel_cross_entropy
        assert r["full_loss_tokens"] > 0 and r["full_loss_max_err"] <= 1e-5
        # k < L (and L), both criteria: float64 with the unsharded head; identical on every TP rank
        for name, rec in r["ref"].items():
            assert rec["err"] <= 2e-5, (name, rec)
            assert rec["same_inf"] and rec["n_inf"] == 1, name  # the row without a labelled token: -inf
            assert rec["tp_identical"], name
        for scope, rec in r["select"].items():
            assert rec["kept_rows"] == 4 and rec["loss_finite"] and rec["scores_match"], (scope, rec)
            assert rec["tp_identical"], f"{scope}: TP ranks kept different rows"
            assert rec["is_topk"], f"{scope}: not the top-k of the (gathered) scores"
            assert rec["rows_match"], f"{scope}: the script's forward_step did not get exactly the kept rows"
            assert {"lm loss", "sift/kept_fraction", "sift/score_kept_mean", "sift/warmup"} <= set(rec["stat_keys"])
            assert rec["kept_fraction_pair"][1] == 8
            assert rec["kept_sum_over_dp"] == 4 * dp  # Megatron's [sum, count] reduction over DP
            assert rec["score_kept_ge_dropped"]
        assert r["select"]["global"]["dp_identical"], "DP ranks disagree on the global selection"
        if dp == 1:
            assert r["select"]["local"]["kept_fraction_pair"][0] == 4
        # evaluation passes through: Megatron's iterator itself, the whole batch, no sift/* keys
        assert r["eval_same_iterator"] and r["eval_rows"] == 8 and r["eval_keys"] == ["lm loss"]
        # training on a repeated gross batch: warm-up for 2 iterations x 2 micro-steps, then by score
        assert r["train_warmup"] == [True] * 4 + [False] * (len(r["train_warmup"]) - 4)
        losses = r["train_losses"]
        assert all(l == l and abs(l) < 1e3 for l in losses)
        assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3, losses
    assert len({json.dumps(r["train_losses"]) for r in results[:tp]}) == 1  # one TP group: one loss curve
    check_gpt(results)


def check_gpt(results):
    """GPTModel, untied output layer + RoPE and tied + learned positions (tests/dist_scripts/megatron_gpt.py)."""
    for r in results:
        assert set(r["gpt"]) == {"untied_rope", "tied_learned"}
        for name, g in r["gpt"].items():
            assert g["adapter"] == "MCoreGPTAdapter", name  # found from the model by Sift
            # k = L: merged per-token CE == the model's own vocab-parallel loss on Megatron's shifted labels
            assert g["full_loss_tokens"] > 0 and g["full_loss_max_err"] <= 1e-5, (name, g)
            assert len(g["ref"]) == 4
            for key, rec in g["ref"].items():  # float64 with the unsharded output weight
                assert rec["err"] <= 2e-5 and rec["same_inf"] and rec["n_inf"] == 1 and rec["tp_identical"], \
                    (name, key, rec)
            sel = g["select"]
            assert sel["score_err"] <= 2e-5 and sel["is_topk"] and sel["rows_match"] and sel["tp_identical"], sel
            assert sel["kept_rows"] == 4 and sel["loss_finite"] and sel["count"] > 0
            assert {"lm loss", "sift/kept_fraction", "sift/score_kept_mean"} <= set(sel["stat_keys"])


def check_state(results):
    """freq_loss at TP=2: resumed from model, optimizer and ``sift.state_dict()``, the same rows, scores
    and losses; the loss dict's pairs, summed over the micro-steps, against the recorded selections."""
    for r in results:
        st = r["state"]
        assert st["baseline_saved"] and st["selections_vary"]
        assert st["resumed_same"] == [True] * 6, st["resumed_same"]
        assert st["same_keys"] and {"sift/selection_time_s", "sift/selection_share", "sift/score_kept_mean",
                                    "sift/kept_fraction", "sift/warmup", "sift/keep_ratio"} <= set(st["keys"])
        assert st["first_keys"] == sorted(set(st["keys"]) - {"sift/selection_time_s", "sift/selection_share"})
        assert st["kept_pair"][1] == st["kept_expected"][1]
        assert abs(st["kept_pair"][0] - st["kept_expected"][0]) <= 1e-4 * max(1.0, abs(st["kept_expected"][0]))
        assert st["fraction_pair"] == st["fraction_expected"]
        assert st["time_pair"][1] == 11 and st["time_pair"][0] > 0  # every micro-step but the last has ended
        assert 0 < st["share_pair"][0] < st["share_pair"][1]


def test_tp2_sequence_parallel_and_pipeline_refused(tmp_path):
    results = launch(tmp_path, 2, "--tp", "2", "--pp_check", "--sp_check", "--gpt_check", "--sparse_check",
                     "--state_check")
    check(results, tp=2, dp=1)
    check_state(results)
    for r in results:  # the masked-positions-only MLM head: the dense vocab-parallel loss and gradients
        sparse = r["sparse"]
        assert not sparse["dense_patched"]
        for name in ("patched", "wrapped"):  # apply_sparse_mlm_head, and Sift's forward_step with SIFT off
            rec = sparse[name]
            assert rec["patched"] and rec["shape"] == [8, 16], (name, rec)
            assert rec["loss_err"] <= 1e-6 and rec["token_err"] <= 1e-5 and rec["grad_err"] <= 1e-6, (name, rec)
            assert rec["zero_elsewhere"] and rec["eval_identical"], (name, rec)
    for r in results:
        assert len(r["pp_errors"]) == 2
        for err in r["pp_errors"]:
            assert err is not None and "pipeline" in err and "1F1B" in err
        # sequence parallelism: each TP rank holds half the sequence after a layer, yet the scores
        # equal the float64 reference of the same weights without SP (the chunks are gathered over s)
        sp = r["sp"]
        assert sp["sequence_parallel"] and sp["same_weights"] and sp["chunk_shape"] == [8, 8, 32]
        assert len(sp["ref"]) == 6
        for name, rec in sp["ref"].items():
            assert rec["err"] <= 2e-5 and rec["same_inf"], (name, rec)
        # the wrapped forward_step keeps the same rows, and the training loss and gradients match
        assert sp["same_selection"] and sp["loss_err"] <= 1e-6 and sp["grad_err"] <= 1e-6, sp


def test_tp2_dp2(tmp_path):
    results = launch(tmp_path, 4, "--tp", "2", "--gpt_check")
    check(results, tp=2, dp=2)


def test_deepspeed_engine_as_the_model(tmp_path):
    """Megatron-DeepSpeed hands forward_step a DeepSpeed engine: the BertModel is found inside it, the
    warm-up follows engine.global_steps, the telemetry comes as 1-element means, and it trains."""
    cmd = [TORCHRUN, "--nproc_per_node", "1", "--master_port", str(free_port()),
           os.path.join(REPO, "tests", "dist_scripts", "megatron_deepspeed.py"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    r = json.load(open(tmp_path / "rank0.json"))
    assert r["steps"] == list(range(8)) and r["warmup"] == [True, True] + [False] * 6
    assert r["telemetry_shapes"] == [[1]] and r["kept_fraction"] == [0.5]
    assert r["eval_same_iterator"]
    assert sum(r["losses"][-2:]) / 2 < sum(r["losses"][:2]) / 2 - 0.3, r["losses"]
