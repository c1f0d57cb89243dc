"""Real tiny runs of offline sifting and the reducible loss: a reference model trained on a held-out
share of the training blocks, the corpus scored once by launch/score_corpus.py (text statistics, the
frozen exit-1 entropy of a checkpoint, the reference loss), a 2-rank run (gloo, global scope: rows move
between the ranks) selecting by a stored score that, stopped and resumed, reproduces the uninterrupted
run bitwise, and 2-rank runs with the reducible loss (online reference model, and stored reference
losses)."""
import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM

from launch_helpers import load_cli, metrics, pretrain_2_ranks, run_python, small_config
from launcher import REPO
from sift_ds.pretrain.corpus import default_corpus
from sift_ds.pretrain.metrics import FlopsModel
from sift_ds.pretrain.tokenizer import batched_texts, train_wordpiece
from sift_ds.study import charges

SCORE_CORPUS = os.path.join(REPO, "launch", "score_corpus.py")
KEPT_DROPPED = os.path.join(REPO, "launch", "kept_dropped.py")


def ok(proc):
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def in_process(script, args) -> int:
    """``script``'s main(ARGS) in this process, on one thread as in its own process under the test
    environment (OMP_NUM_THREADS=1): its exit status (a refusal raises SystemExit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return load_cli(script).main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)


def test_offline_sifting_and_reducible_runs(tmp_path, capsys):
    config = small_config(tmp_path, max_steps=6)
    train_wordpiece(batched_texts(default_corpus()), 1000).save_pretrained(tmp_path / "tokenizer")
    data = ["--ds_config", config, "--tokenizer", str(tmp_path / "tokenizer"), "--holdout_fraction", "0.2"]
    common = data + ["--sift_warmup_steps", "2", "--sift_start_after_lr_peak", "true"]  # the LR warm-up is 2 steps

    # The reference model: vanilla, on the held-out share only; its checkpoint doubles as the frozen model.
    reference = tmp_path / "reference"
    ok(run_python(data + ["--train_on", "holdout", "--sift_enabled", "false", "--max_steps", "2",
                          "--output_dir", reference], timeout=300))
    scores = tmp_path / "scores.npz"
    # The two tools run in this process (their main, as their command line calls it): no interpreter start-up.
    assert in_process(SCORE_CORPUS, ["--out", scores, "--masks", "2", "--scores",
                                     "unigram_entropy,unique_share,frozen_entropy,reference_loss",
                                     "--checkpoint", reference / "checkpoints" / "global_step2",
                                     "--reference", reference / "final", "--", *data]) == 0
    with np.load(scores) as archive:
        meta = json.loads(str(archive["meta"]))
        values = {name: archive[name] for name in meta["scores"]}
    n = meta["num_blocks"]
    assert all(v.shape == (n,) and np.isfinite(v).all() for v in values.values())
    assert 0 < values["unique_share"].min() and values["unique_share"].max() <= 1
    cost = meta["scores"]["reference_loss"]["reference_training"]
    assert cost["steps"] == 2 and cost["samples"] == metrics(reference)[-1]["samples"] > 0

    # What a stored unique-token share keeps: the blocks of the higher shares, by the tool's own count.
    capsys.readouterr()
    assert in_process(KEPT_DROPPED, ["--checkpoint", reference / "checkpoints" / "global_step2", "--batches", "4", "--",
                                     *common, "--sift_criterion", "stored", "--sift_score_file", scores,
                                     "--sift_score_name", "unique_share"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| unique_share |")).split("|")
    assert float(row[2]) > float(row[3]) and "Examples, kept:" in table

    # Criterion stored on 2 ranks: an uninterrupted run, and the same run stopped at step 3 and resumed.
    stored = common + ["--sift_criterion", "stored", "--sift_score_file", scores, "--sift_score_name", "frozen_entropy"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    pretrain_2_ranks(stored + ["--output_dir", whole])
    pretrain_2_ranks(stored + ["--output_dir", split, "--exit_interval", "3"])
    resumed = pretrain_2_ranks(stored + ["--output_dir", split, "--resume", "auto"])
    assert "resumed from" in resumed.stdout + resumed.stderr
    want, got = metrics(whole), metrics(split)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 7))
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in want]  # bitwise
    selected = [r for r in want if r["sift/warmup"] == 0.0]
    # The kept rows lie above the global cut and the dropped rows below it; pooled over both ranks, the
    # kept share of the gross rows is the keep ratio, however the ranks shared the kept rows.
    assert len(selected) == 4 and all(r["sift/score_kept_mean"] > r["sift/score_dropped_mean"] for r in selected)
    assert all(r["sift/kept_fraction"] == 0.5 for r in selected)
    assert [r["sift/score_kept_mean"] for r in got] == [r["sift/score_kept_mean"] for r in want]
    with open(whole / "run_config.json", encoding="utf-8") as f:
        assert json.load(f)["sift"]["stored"]["score_name"] == "frozen_entropy"

    # Criterion reducible on 2 ranks: the reference model online, and its stored losses.
    for name, target in (("online", reference / "final"), ("stored", scores)):
        out = tmp_path / f"reducible_{name}"
        pretrain_2_ranks(common + ["--sift_criterion", "reducible", "--sift_reference", target, "--max_steps", "4",
                                   "--output_dir", out])
        records = metrics(out)
        assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["sift/warmup"] == 0.0
        for r in records[2:]:  # z-differences: the kept rows above the dropped ones at every selecting step
            assert r["sift/nonfinite_scores"] == 0.0 and r["sift/score_kept_mean"] > r["sift/score_dropped_mean"]

    # What a study charges each run once (sift_ds.study.charges), rebuilt here from the records the
    # steps above left: seconds as recorded, samples as FLOPs over the run's own training FLOPs per sample.
    about = meta["scores"]
    ref_cost, warm_cost = metrics(reference)[-1], [r for r in metrics(reference) if r["step"] <= 2][-1]
    with open(whole / "run_config.json", encoding="utf-8") as f:
        opts = json.load(f)["options"]
    seq, fraction = opts["seq_len"], opts["mlm_probability"]
    own = FlopsModel.for_masked_lm(AutoModelForMaskedLM.from_pretrained(whole / "final"), seq, 1, fraction,
                                   opts["sparse_mlm_head"])
    ref = FlopsModel.for_masked_lm(AutoModelForMaskedLM.from_pretrained(reference / "final"), seq,
                                   AutoConfig.from_pretrained(reference / "final").num_hidden_layers, fraction, True)
    per_sample = own.train_per_token * seq
    frozen = charges.one_off(str(whole))
    assert frozen.seconds == pytest.approx(about["frozen_entropy"]["seconds"] + warm_cost["elapsed_s"])
    assert frozen.samples == pytest.approx((warm_cost["samples"] * seq * own.train_per_token
                                            + n * 2 * seq * own.select_per_token) / per_sample)
    online = charges.one_off(str(tmp_path / "reducible_online"))
    assert online.seconds == pytest.approx(ref_cost["elapsed_s"])
    assert online.samples == pytest.approx(ref_cost["samples"] * seq * ref.train_per_token / per_sample)
    stored_ref = charges.one_off(str(tmp_path / "reducible_stored"))
    assert stored_ref.seconds == pytest.approx(about["reference_loss"]["seconds"] + ref_cost["elapsed_s"])
    assert stored_ref.samples == pytest.approx(online.samples + n * 2 * seq * ref.select_per_token / per_sample)
    assert charges.one_off(str(reference)) == charges.NONE  # vanilla pays nothing once
