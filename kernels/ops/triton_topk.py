"""Top-k of per-sequence scores as one small Triton kernel (the follow-up to the scorer).

Each score's rank is counted directly: ``rank_i = #{j : key_j > key_i} + #{j < i : key_j == key_i}``
with ``key = score`` where finite and ``-inf`` otherwise, so non-finite scores rank below every
finite one and ties go to the lower index. Program ``p`` ranks a block of ``BLOCK_I`` scores
against all others in chunks of ``BLOCK_J`` and writes ``out[rank_i] = i`` where ``rank_i < k``.
The ranks are a permutation, so every output slot is written exactly once: no sort, no atomics,
no host synchronisation. O(B^2) comparisons, which is nothing for gross batches of 10^2..10^4 rows.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..reference import check_k
from .scorer_launch import _device_guard, _interpreting

_BLOCK_I, _BLOCK_J = 64, 64


def _topk_rank_kernel(scores_ptr, out_ptr, B, K, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    offs_i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_i = offs_i < B
    x_i = tl.load(scores_ptr + offs_i, mask=mask_i, other=0.0)
    key_i = tl.where((x_i == x_i) & (x_i != float("inf")) & (x_i != float("-inf")), x_i, float("-inf"))
    rank = tl.full([BLOCK_I], 0, tl.int32)
    for start in range(0, B, BLOCK_J):
        offs_j = start + tl.arange(0, BLOCK_J)
        mask_j = offs_j < B
        x_j = tl.load(scores_ptr + offs_j, mask=mask_j, other=0.0)
        key_j = tl.where((x_j == x_j) & (x_j != float("inf")) & (x_j != float("-inf")), x_j, float("-inf"))
        ahead = (key_j[None, :] > key_i[:, None]) | (
            (key_j[None, :] == key_i[:, None]) & (offs_j[None, :] < offs_i[:, None])
        )
        ahead = ahead & mask_j[None, :]
        rank += tl.reduce(ahead.to(tl.int32), 1, tl.standard._sum_combine)
    tl.store(out_ptr + rank, offs_i.to(tl.int64), mask=mask_i & (rank < K))


@functools.lru_cache(maxsize=None)
def _kernel(interpret: bool):
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_topk_rank_kernel)
    from triton.runtime.jit import JITFunction

    return JITFunction(_topk_rank_kernel)


def select_topk_triton(scores: torch.Tensor, k: int, *, out: torch.Tensor = None) -> torch.Tensor:
    """LongTensor[k]: indices of the k largest scores, largest first (same contract as
    ``sift_ds.kernels.select_topk``)."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    n = scores.numel()
    k = check_k(k, n)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # exact; keeps fp64 scores in fp64 so no new ties appear
    scores = scores.contiguous()
    if out is None:
        out = torch.empty(k, dtype=torch.int64, device=scores.device)
    if k:
        with _device_guard(scores.device):
            _kernel(_interpreting(scores.device))[(triton.cdiv(n, _BLOCK_I),)](
                scores, out, n, k, BLOCK_I=_BLOCK_I, BLOCK_J=_BLOCK_J
            )
    return out
