"""Which rows of the gross batch are trained on: the warm-up subset, top-k or rank sampling of the
scores, the robustness knobs (annealed keep ratio, random share, outlier guard), and the scope.

Every function here is a pure function of the scores and of ``(seed, step, micro_step, ...)``:
the same on every rank and after a resume. Kept indices are ascending (kept rows keep their order).
Under scope "global" the indices refer to the concatenation of every data-parallel rank's gross
batch in rank order; which rank trains which kept row is ``row_exchange.exchange_plan``'s choice.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import kernels
from .config import SiftConfig
from .seeding import generator

# Stream tags that keep the selector's random draws apart (mixed into the seed key).
WARMUP_STREAM, POOL_STREAM, RANDOM_STREAM, SAMPLE_STREAM = 0, 1, 2, 3


def local_topk(scores: torch.Tensor, keep: int, backend: str = "auto") -> torch.Tensor:
    """Ascending indices of the ``keep`` highest-scoring rows."""
    return torch.sort(kernels.select_topk(scores, keep, backend)).values


def gather_scores(scores: torch.Tensor, group=None) -> torch.Tensor:
    """Every data-parallel rank's gross-batch scores, concatenated in rank order (one all-gather;
    ``scores`` itself without a process group or in a group of one)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return scores
    gathered = [torch.empty_like(scores) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, scores.contiguous(), group=group)
    return torch.cat(gathered)


def warmup_subset(gross: int, keep: int, seed: int, step: int, micro_step: int, rank: int) -> torch.Tensor:
    """A uniform random subset of ``keep`` of ``gross`` rows, ascending; a function of (seed, optimizer
    step, micro-step, rank), so any rank can compute any other rank's subset."""
    gen = generator(seed, WARMUP_STREAM, step, micro_step, rank)
    return torch.sort(torch.randperm(gross, generator=gen)[:keep]).values


def warmup_global_indices(gross, keep, seed, step, micro_step, world) -> torch.Tensor:
    """Global-scope warm-up: each rank keeps its own random subset (no rows move), as global indices."""
    return torch.cat([r * gross + warmup_subset(gross, keep, seed, step, micro_step, r) for r in range(world)])


def select_by_score(scores: torch.Tensor, keep: int, cfg: SiftConfig, step: int, micro_step: int) -> torch.Tensor:
    """Ascending indices of ``keep`` rows of ``scores`` (one rank's, or all ranks' concatenated) under
    the knobs of ``cfg``; with the defaults this is exactly ``local_topk`` (the paper's strict top-k).

    1. outlier guard: the top ``outlier_fraction`` of the scores are not eligible;
    2. annealing: only a random pool of ``keep / keep_ratio_at(step)`` eligible rows competes;
    3. ``keep - round(random_fraction * keep)`` rows by score: strict top-k, or sampled without
       replacement with probability ``percentile ** (1 / keep_ratio - 1)`` of the score rank;
    4. the random share: uniformly from the pool rows not yet kept.
    """
    if cfg.plain_topk:
        return local_topk(scores, keep, cfg.kernel)
    n, device = scores.shape[0], scores.device
    key = (cfg.seed, step, micro_step)
    eligible = torch.ones(n, dtype=torch.bool, device=device)
    if cfg.outlier_fraction > 0:
        dropped = int(cfg.outlier_fraction * n)
        if dropped:
            eligible[kernels.select_topk(scores, dropped, "torch")] = False
    ratio = cfg.keep_ratio_at(step)
    if ratio > cfg.keep_ratio:
        pool_size = max(keep, min(n, round(keep / ratio)))
        order = torch.randperm(n, generator=generator(*key, POOL_STREAM)).to(device)
        ranked = order[torch.argsort((~eligible[order]).to(torch.int8), stable=True)]  # eligible first
        pool = torch.zeros(n, dtype=torch.bool, device=device)
        pool[ranked[:pool_size]] = True
        eligible = pool
    n_random = round(cfg.random_fraction * keep)
    masked = scores.float().masked_fill(~eligible, float("-inf"))
    if cfg.sampling == "rank":
        by_score = _rank_sample(masked, eligible, keep - n_random, cfg.keep_ratio, generator(*key, SAMPLE_STREAM))
    else:
        by_score = kernels.select_topk(masked, keep - n_random, cfg.kernel)
    kept = torch.zeros(n, dtype=torch.bool, device=device)
    kept[by_score] = True
    if n_random:
        rest = eligible & ~kept
        noise = torch.rand(n, generator=generator(*key, RANDOM_STREAM)).to(device)
        kept[torch.topk(noise.masked_fill(~rest, -1.0), n_random).indices] = True
    return torch.nonzero(kept, as_tuple=False).squeeze(1)


def _rank_sample(scores: torch.Tensor, eligible: torch.Tensor, k: int, keep_ratio: float, gen) -> torch.Tensor:
    """``k`` eligible rows sampled without replacement, P proportional to percentile^(1/keep - 1),
    percentile = (rank from the lowest score + 1) / eligible count (Composer's SelectiveBackprop)."""
    order = torch.argsort(scores, stable=True)  # ineligible (-inf) rows first
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device)
    count = eligible.sum()
    percentile = (ranks - (order.numel() - count) + 1).clamp(min=0).double() / count.clamp(min=1)
    weights = percentile.pow(1.0 / keep_ratio - 1.0).masked_fill(~eligible, 0.0)
    # Exponential race (Efraimidis-Spirakis) = sampling without replacement in proportion to weights.
    race = torch.empty(weights.shape, dtype=weights.dtype).exponential_(generator=gen).to(weights.device)
    keys = (weights / race).masked_fill(~eligible, -1.0)
    return torch.topk(keys, k).indices
