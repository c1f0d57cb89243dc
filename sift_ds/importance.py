"""Unbiased importance sampling of rows (Katharopoulos & Fleuret 2018), ``sift.criterion="importance"``.

Of the N rows of the gross batch (scope "global": of every rank's, concatenated), K are drawn
independently *with replacement* with probability

    p_i = (1 - lambda) g_i / sum_j g_j + lambda / N        (lambda = sift.importance_mix)

where g_i is the row's mean gradient-norm bound (``criteria``; 0 for a row with no scored token,
uniform p when every g is 0). Drawn row k then counts with weight ``w_k = 1 / (N p_k)``.

Which uniform loss the weights reproduce in expectation: the validation loss and the model's own
training loss are means over *masked tokens*, ``sum_i S_i / sum_i n_i`` (S_i the row's summed token
loss, n_i its masked-token count). With ``n_bar = sum_i n_i / N``, the estimator

    L_hat = (1 / K) sum_k w_k S_k / n_bar

has ``E[L_hat] = sum_i p_i S_i / (N p_i n_bar) = sum_i S_i / sum_i n_i``, exactly, for every draw
count K (the draws are i.i.d.). A front-end forms its loss as usual, a token mean
``sum_t l_t / T`` over the T masked tokens of the rows it trains, after multiplying each token's loss
by its row's entry of ``Selection.weights``:

    omega_k = w_k * T / (K n_bar)        so that        sum_t omega_k(t) l_t / T = L_hat.

(Scope "global": each rank forms ``L_hat`` over the K/world rows it trains, with the global n_bar;
the mean over ranks that data-parallel training takes is then the global estimator.)

The draws are a pure function of ``(seed, step, micro_step)`` and, under scope "local", the rank:
uniforms from a seeded CPU generator, inverted through the float64 cumulative distribution on the
device (no host sync), so that a resumed run draws exactly what the uninterrupted run drew.
"""
from __future__ import annotations

import torch

from .seeding import generator

IMPORTANCE_STREAM = 4  # seed-sequence tag of the draws (the selector's streams are 0..3)


def sampling_probabilities(scores: torch.Tensor, mix: float) -> torch.Tensor:
    """float64 [N]: ``p_i = (1 - mix) g_i / sum g + mix / N``, with g the finite non-negative part of
    ``scores`` (a row with no scored token, ``-inf``, has g = 0); uniform where every g is 0."""
    g = torch.where(torch.isfinite(scores), scores.double(), torch.zeros_like(scores, dtype=torch.float64))
    g = g.clamp_min(0.0)
    n = g.numel()
    total = g.sum()
    share = torch.where(total > 0, g / total.clamp_min(torch.finfo(torch.float64).tiny), torch.full_like(g, 1.0 / n))
    return (1.0 - mix) * share + mix / n


def draw_rows(probabilities: torch.Tensor, count: int, seed: int, step: int, micro_step: int,
              rank: int = 0) -> torch.Tensor:
    """Ascending indices of ``count`` rows drawn i.i.d. with replacement from ``probabilities``
    (repeats kept); a pure function of ``(seed, step, micro_step, rank)``."""
    gen = generator(seed, step, micro_step, rank, IMPORTANCE_STREAM)
    uniforms = torch.rand(count, generator=gen, dtype=torch.float64).to(probabilities.device, non_blocking=True)
    cumulative = torch.cumsum(probabilities.double(), 0)
    drawn = torch.searchsorted(cumulative, uniforms * cumulative[-1], right=True)
    return torch.sort(drawn.clamp_max(probabilities.numel() - 1)).values


def loss_weights(probabilities: torch.Tensor, row_tokens: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
    """float32 [K]: ``omega_k`` (module docstring) of the rows ``trained`` (indices into
    ``probabilities`` and ``row_tokens``, the masked-token count of every one of the N rows)."""
    n = probabilities.numel()
    tokens = row_tokens.double()
    mean_tokens = tokens.mean()
    trained_tokens = tokens.index_select(0, trained).sum()
    weights = 1.0 / (n * probabilities.index_select(0, trained))
    scale = torch.where(mean_tokens > 0, trained_tokens / (trained.numel() * mean_tokens.clamp_min(1e-300)),
                        torch.ones_like(mean_tokens))
    return (weights * scale).float()
