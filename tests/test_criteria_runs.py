"""The frequency-corrected loss and importance sampling in 2-rank DeepSpeed pretraining runs on the CPU
(gloo, scope "global": rows move between the ranks): a run stopped after the warm-up and resumed
selects, trains and ends exactly as the uninterrupted run (the running baseline travels in the
checkpoint; the draws are pure functions of the seed, step and micro-step), and the job writes the
unigram counts of its training split for the unigram baseline."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from launch_helpers import metrics, pretrain_2_ranks, small_config
from sift_ds.pretrain.corpus import default_corpus
from sift_ds.pretrain.tokenizer import batched_texts, train_wordpiece

STEPS, STOP, WARMUP = 6, 4, 2


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece(batched_texts(default_corpus()), 1000).save_pretrained(path)
    return path


@pytest.mark.parametrize("flags", [["--sift_criterion", "freq_loss"],
                                   ["--sift_criterion", "importance", "--sift_importance_mix", "0.3"]],
                         ids=["freq_loss-running", "importance"])
def test_a_resumed_run_selects_what_the_uninterrupted_run_selected(tmp_path, tokenizer, flags):
    config = small_config(tmp_path, max_steps=STEPS)
    common = ["--ds_config", config, "--sift_warmup_steps", WARMUP, "--sift_start_after_lr_peak", "true",  # LR warm-up 2
              "--tokenizer", tokenizer, *flags]
    reference, split = tmp_path / "reference", tmp_path / "split"
    pretrain_2_ranks(common + ["--output_dir", reference])
    pretrain_2_ranks(common + ["--output_dir", split, "--exit_interval", STOP])
    pretrain_2_ranks(common + ["--output_dir", split, "--resume", "auto"])

    want, got = metrics(reference), metrics(split)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    assert [r["sift/warmup"] for r in want] == [1.0] * WARMUP + [0.0] * (STEPS - WARMUP)
    for a, b in zip(want, got):
        # Bitwise: the same rows were kept (and, for importance, weighted alike) at every step.
        assert b["train_loss"] == a["train_loss"], a["step"]
        for key in ("sift/score_kept_mean", "sift/score_dropped_mean"):
            assert b[key] == a[key] or (a[key] != a[key] and b[key] != b[key]), (key, a["step"])
    scored = [r["sift/score_kept_mean"] for r in want[WARMUP:]]
    assert all(np.isfinite(scored)), scored
    final_want, final_got = (load_file(run / "final" / "model.safetensors") for run in (reference, split))
    for name in final_want:
        assert torch.equal(final_want[name], final_got[name]), name


def test_the_job_counts_its_training_split_for_the_unigram_baseline(tmp_path, tokenizer):
    config = small_config(tmp_path, max_steps=2)
    out = tmp_path / "run"
    proc = pretrain_2_ranks(["--ds_config", config, "--sift_selection_start_step", 1, "--tokenizer", tokenizer,
                             "--sift_criterion", "freq_loss", "--sift_frequency_baseline", "unigram",
                             "--output_dir", out])
    counts = np.load(out / "unigram_counts.npy")
    log = proc.stdout + proc.stderr
    # "data: ... -> T train / V validation blocks of 64 tokens": every token of every training block.
    train_blocks = int(log.split(" train / ")[0].rsplit("-> ", 1)[1])
    assert counts.shape == (len(train_wordpiece_vocab(tokenizer)),)
    assert int(counts.sum()) == train_blocks * 64
    assert np.isfinite(metrics(out)[-1]["sift/score_kept_mean"])


def train_wordpiece_vocab(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path).get_vocab()
