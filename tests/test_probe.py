"""The early-exit fidelity probe: rank statistics against scipy, the probe of a real BERT at exit 1 and
at the full depth against scipy on a direct HF forward, and exact known values on a crafted model."""
import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from sift_ds import BertAdapter, SiftConfig
from sift_ds.probe import fidelity, ranks, spearman, top_overlap
from test_select_matches_hf import hf_reference_scores
from tiny import f64_row_scores, mlm_batch, spread_weights, tiny_bert


@pytest.mark.parametrize("seed", range(4))
def test_ranks_and_spearman_match_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 40).astype(np.float64)  # many ties
    b = a + rng.normal(0, 2, 40)
    assert np.allclose(ranks(torch.tensor(a)).numpy(), scipy.stats.rankdata(a) - 1)
    assert spearman(torch.tensor(a), torch.tensor(b)) == pytest.approx(scipy.stats.spearmanr(a, b)[0], abs=1e-12)


def test_top_overlap():
    a = torch.tensor([1.0, 2, 3, 4, 5, 6])
    assert top_overlap(a, a) == 1.0 and top_overlap(a, -a) == 0.0
    assert top_overlap(a, torch.tensor([6.0, 5, 1, 2, 3, 4])) == pytest.approx(1 / 3)


def test_full_depth_probe_matches_the_model_s_own_logits():
    """At exit L the early exit is the whole model: the entropy criterion's probe against the full loss
    equals scipy's Spearman and a numpy top-half overlap of both scores from the model's own forward
    (``model(...).logits``, not the early-exit path), and neither is 1."""
    model = spread_weights(tiny_bert(layers=3, seed=2), 6)
    batch = mlm_batch(12, seed=5, empty_row=True)
    out = fidelity(BertAdapter(model), batch, SiftConfig(exit_layer=3, criterion="entropy", kernel="torch"))
    model.eval()
    with torch.no_grad():
        logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    labelled = batch["labels"] != -100
    entropy, loss = (f64_row_scores(logits, batch["labels"], labelled, c).numpy() for c in ("entropy", "loss"))
    valid = np.isfinite(loss)
    assert valid.sum() == 11  # the row without a labelled token is left out
    want = scipy.stats.spearmanr(entropy[valid], loss[valid])[0]
    k = round(valid.sum() / 2)
    top = lambda v: set(np.argsort(-v[valid], kind="stable")[:k])  # noqa: E731
    assert out["probe/spearman"] == pytest.approx(want, abs=1e-6) and abs(want) < 0.99
    assert out["probe/top_half_overlap"] == pytest.approx(len(top(entropy) & top(loss)) / k)


@pytest.mark.parametrize("criterion", ["loss", "entropy"])
def test_probe_matches_a_direct_hf_forward(criterion):
    model = tiny_bert(layers=3, seed=1)
    batch = mlm_batch(16, seed=3, empty_row=True)
    out = fidelity(BertAdapter(model), batch, SiftConfig(exit_layer=1, criterion=criterion, kernel="torch"))
    early = hf_reference_scores(model, batch, 1, criterion).numpy()
    full = hf_reference_scores(model, batch, 3, "loss").numpy()
    valid = np.isfinite(early) & np.isfinite(full)
    assert out["probe/spearman"] == pytest.approx(scipy.stats.spearmanr(early[valid], full[valid])[0], abs=1e-6)
    k = round(valid.sum() / 2)
    top = lambda v: set(np.argsort(-v[valid], kind="stable")[:k])  # noqa: E731
    assert out["probe/top_half_overlap"] == pytest.approx(len(top(early) & top(full)) / k)


class MirrorAdapter:
    """H = 1, V = 2, every labelled target is class 1, so the per-token loss is softplus(h): increasing
    in h. The embedding is one value per sequence; layer 0 keeps it, layer 1 maps x -> f(x)."""

    def __init__(self, second_layer):
        self.num_layers = 2
        self.f = second_layer
        self.head = nn.Identity()
        self.weight = torch.tensor([[1.0], [0.0]])

    def embed(self, batch):
        return batch["x"][:, None, None].expand(-1, batch["labels"].shape[1], 1).clone(), None

    def layer(self, index, hidden, ctx):
        return hidden if index == 0 else self.f(hidden)

    def head_transform(self, rows):
        return rows

    def vocab_projection(self):
        return self.weight, None

    def selection_modules(self, exit_layer):
        return [self.head]


def crafted_batch(x):
    labels = torch.ones(len(x), 4, dtype=torch.long)
    return {"x": torch.tensor(x, dtype=torch.float32), "labels": labels}


def test_crafted_model_known_values():
    x = [-3.0, -1.0, 0.5, 2.0, 4.0, 7.0]
    reversed_ = fidelity(MirrorAdapter(lambda h: -h), crafted_batch(x), SiftConfig(criterion="loss", exit_layer=1, kernel="torch"))
    assert reversed_ == {"probe/spearman": pytest.approx(-1.0), "probe/top_half_overlap": 0.0}
    # f(x) = x^2: full-loss order by |x|: ranks of |x| = [4, 1, 0, 2, 3, 5] vs x ranks [0..5]
    squared = fidelity(MirrorAdapter(lambda h: h * h), crafted_batch(x), SiftConfig(criterion="loss", exit_layer=1, kernel="torch"))
    expected = scipy.stats.spearmanr(x, np.abs(x))[0]
    assert squared["probe/spearman"] == pytest.approx(expected)
    assert squared["probe/top_half_overlap"] == pytest.approx(2 / 3)  # top 3 by x {3,4,5}; by |x| {0,4,5}


def test_rows_without_labels_are_left_out():
    batch = crafted_batch([1.0, 2.0, 3.0, 4.0])
    batch["labels"][1] = -100
    out = fidelity(MirrorAdapter(lambda h: 2 * h), batch, SiftConfig(criterion="loss", exit_layer=1, kernel="torch"))
    assert out["probe/spearman"] == pytest.approx(1.0)
    batch["labels"][:] = -100
    assert all(math.isnan(v) for v in fidelity(MirrorAdapter(lambda h: h), batch,
                                                 SiftConfig(criterion="loss", exit_layer=1, kernel="torch")).values())
