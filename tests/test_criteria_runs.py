"""The frequency-corrected loss with the unigram baseline in a 2-rank DeepSpeed pretraining run on the
CPU: the job writes the unigram counts of its training split, and selects by finite scores. (A run of
the frequency-corrected loss and one of importance sampling, each stopped and resumed
exactly: tests/test_resume.py.)"""
import numpy as np
import pytest

from launch_helpers import metrics, pretrain_2_ranks, small_config
from sift_ds.pretrain.corpus import default_corpus
from sift_ds.pretrain.tokenizer import batched_texts, train_wordpiece

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece(batched_texts(default_corpus()), 1000).save_pretrained(path)
    return path


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
