"""The selector's robustness knobs against independent references: which rows are kept, the
schedule by step, and the sampling distribution by seeded frequency tests."""
import itertools
import math

import numpy as np
import pytest
import torch

from sift_ds import SiftConfig
from sift_ds.selector import select_by_score, warmup_subset

N, KEEP = 16, 8


def scores_perm(seed=0, n=N):
    return torch.tensor(np.random.default_rng(seed).permutation(n).astype(np.float32))


def reference_topk(scores: np.ndarray, k: int, eligible=None) -> set:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if eligible is not None:
        order = [i for i in order if eligible[i]]
    return set(order[:k])


def kept(cfg, scores, step=100, micro=0, keep=KEEP):
    out = select_by_score(scores, keep, cfg, step, micro)
    assert out.tolist() == sorted(out.tolist()) and len(set(out.tolist())) == keep
    return set(out.tolist())


@pytest.mark.parametrize("seed", range(5))
def test_default_is_the_papers_strict_topk(seed):
    s = scores_perm(seed)
    assert kept(SiftConfig(kernel="torch"), s) == reference_topk(s.numpy(), KEEP)


def test_outlier_guard_drops_the_top_share_then_takes_topk():
    s = scores_perm(3)
    cfg = SiftConfig(kernel="torch", keep_ratio=0.5, outlier_fraction=0.25)
    dropped = reference_topk(s.numpy(), 4)  # int(0.25 * 16) highest scores are not eligible
    eligible = [i not in dropped for i in range(N)]
    assert kept(cfg, s) == reference_topk(s.numpy(), KEEP, eligible)
    assert not kept(cfg, s) & dropped


def test_random_fraction_keeps_topk_part_and_a_uniform_rest():
    s = scores_perm(4)
    cfg = SiftConfig(kernel="torch", random_fraction=0.25)  # 2 of 8 kept rows are random
    top6 = reference_topk(s.numpy(), 6)
    counts = np.zeros(N)
    trials = 3000
    for step in range(trials):
        rows = kept(cfg, s, step=step)
        assert top6 <= rows
        for r in rows - top6:
            counts[r] += 1
    rest = [i for i in range(N) if i not in top6]
    assert counts[list(top6)].sum() == 0
    expected = trials * 2 / len(rest)  # each of the 10 other rows: 2/10 per trial
    chi2 = ((counts[rest] - expected) ** 2 / expected).sum()
    assert chi2 < 30, (chi2, counts[rest])  # 9 d.o.f.: p ~ 4e-4
    # deterministic per (seed, step, micro) and different between micro-steps
    assert kept(cfg, s, step=5) == kept(cfg, s, step=5)
    assert any(kept(cfg, s, step=5, micro=m) != kept(cfg, s, step=5) for m in range(1, 6))


def test_anneal_schedule_by_step():
    cfg = SiftConfig(keep_ratio=0.25, warmup_steps=10, anneal_end_step=40)
    ratios = {step: cfg.keep_ratio_at(step) for step in (0, 10, 25, 39, 40, 100)}
    assert ratios == {0: 0.25, 10: 0.25, 25: 0.25 + 0.5 * 0.75, 39: 0.25 + 29 / 30 * 0.75, 40: 1.0, 100: 1.0}
    assert [cfg.selecting(s) for s in (0, 9, 10, 39, 40, 1000)] == [False, False, True, True, False, False]
    paper = SiftConfig(keep_ratio=0.5, warmup_steps=10)
    assert [paper.keep_ratio_at(s) for s in (0, 10, 10**6)] == [0.5] * 3 and paper.selecting(10**6)


def test_anneal_picks_topk_within_a_random_pool_of_keep_over_ratio_rows():
    s = scores_perm(5, n=32)
    cfg = SiftConfig(kernel="torch", keep_ratio=0.25, warmup_steps=0, anneal_end_step=100)
    step = 50  # ratio 0.625: pool of round(8 / 0.625) = 13 rows, top 8 of them kept
    best = int(torch.argmax(s))
    hits, trials = 0, 2000
    for micro in range(trials):
        rows = kept(cfg, s, step=step, micro=micro)
        hits += best in rows  # the best row is kept iff it is in the pool
    assert abs(hits / trials - 13 / 32) < 4 * math.sqrt(13 / 32 * 19 / 32 / trials)
    assert kept(cfg, s, step=0) == reference_topk(s.numpy(), 8)  # at the start: plain top-k of all 32


def inclusion_probabilities(weights, k):
    """Exact P(i in sample) of successive sampling without replacement in proportion to weights."""
    n = len(weights)
    probs = np.zeros(n)
    for seq in itertools.permutations(range(n), k):
        p, left = 1.0, sum(weights)
        for i in seq:
            p *= weights[i] / left
            left -= weights[i]
        for i in seq:
            probs[i] += p
    return probs


@pytest.mark.parametrize("keep_ratio,k", [(0.5, 1), (0.5, 2), (0.25, 2)])
def test_rank_sampling_matches_composer_distribution(keep_ratio, k):
    n = 5
    s = torch.tensor([0.3, 2.0, -1.0, 0.7, 5.0])
    ranks = np.argsort(np.argsort(s.numpy()))  # 0 = lowest score
    weights = ((ranks + 1) / n) ** (1 / keep_ratio - 1)
    expected = inclusion_probabilities(list(weights), k)
    cfg = SiftConfig(kernel="torch", keep_ratio=keep_ratio, sampling="rank")
    trials = 6000
    counts = np.zeros(n)
    for step in range(trials):
        for r in kept(cfg, s, step=step, keep=k):
            counts[r] += 1
    freq = counts / trials
    tol = 4 * np.sqrt(expected * (1 - expected) / trials) + 1e-9
    assert np.all(np.abs(freq - expected) <= tol), (freq, expected)


def test_warmup_subset_uses_the_documented_seed_mixing():
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([7, 0, 3, 1, 2]).generate_state(1, np.uint64)[0]
                                            >> np.uint64(1)))
    reference = sorted(torch.randperm(10, generator=gen)[:4].tolist())
    assert warmup_subset(10, 4, seed=7, step=3, micro_step=1, rank=2).tolist() == reference


@pytest.mark.parametrize("key,value,message", [
    ("random_fraction", 1.0, "sift.random_fraction must be in [0, 1)"),
    ("outlier_fraction", -0.1, "sift.outlier_fraction must be in [0, 1)"),
    ("sampling", "softmax", "sift.sampling must be one of ['topk', 'rank']"),
    ("anneal_end_step", 5, "sift.anneal_end_step=5 must be 0 or after sift.selection_start_step=10"),
])
def test_knobs_are_validated(key, value, message):
    with pytest.raises(ValueError, match=None) as err:
        SiftConfig.from_dict({"warmup_steps": 10, key: value})
    assert message in str(err.value)
