"""Which rows of the gross batch are trained on: top-k, scope (local / global) and warm-up schedule.

Kept indices are always returned in ascending order (the kept rows keep their original order).
Under scope "global" the indices refer to the concatenation of every data-parallel rank's gross
batch in rank order, are identical on every rank, and rank ``r`` trains on ``indices[r*M:(r+1)*M]``.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist

from . import kernels


def local_topk(scores: torch.Tensor, keep: int, backend: str = "auto") -> torch.Tensor:
    """Ascending indices of the ``keep`` highest-scoring rows of this rank's gross batch."""
    return torch.sort(kernels.select_topk(scores, keep, backend)).values


def global_topk(scores: torch.Tensor, keep_per_rank: int, group=None, backend: str = "auto") -> torch.Tensor:
    """Ascending indices of the world x ``keep_per_rank`` highest scores over all ranks' gross
    batches (all-gather of the scores only; the top-k is computed identically on every rank)."""
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(scores) for _ in range(world)]
    dist.all_gather(gathered, scores.contiguous(), group=group)
    return local_topk(torch.cat(gathered), keep_per_rank * world, backend)


def warmup_subset(gross: int, keep: int, seed: int, step: int, micro_step: int, rank: int) -> torch.Tensor:
    """A uniform random subset of ``keep`` of ``gross`` rows, ascending. Stateless: a function of
    (seed, optimizer step, micro-step, rank), so it is the same after a resume and any rank can
    compute any other rank's subset."""
    gen = torch.Generator().manual_seed(hash((seed, step, micro_step, rank)) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.sort(torch.randperm(gross, generator=gen)[:keep]).values


def warmup_global_indices(gross, keep, seed, step, micro_step, world) -> torch.Tensor:
    """Global-scope warm-up: each rank keeps its own random subset (no rows move), expressed as
    global indices, identical on every rank."""
    return torch.cat(
        [r * gross + warmup_subset(gross, keep, seed, step, micro_step, r) for r in range(world)]
    )


# ---------------------------------------------------------------------------------------- row moves
def _pack(batch: Dict[str, torch.Tensor], rows: int):
    """All batch tensors as one int32 [rows, width] tensor (one collective instead of one per key)."""
    cols, layout = [], []
    for key, t in batch.items():
        flat = t.reshape(rows, -1)
        if t.is_floating_point():
            packed = flat.float().view(torch.int32)
        else:  # token ids, labels, masks: int32 is wide enough, and halves the traffic of int64
            packed = flat.to(torch.int32)
        cols.append(packed)
        layout.append((key, t.dtype, tuple(t.shape[1:]), packed.shape[1]))
    return torch.cat(cols, dim=1), layout


def _unpack(packed: torch.Tensor, layout) -> Dict[str, torch.Tensor]:
    out, col = {}, 0
    for key, dtype, tail, width in layout:
        part = packed[:, col : col + width]
        col += width
        value = part.contiguous().view(torch.float32) if dtype.is_floating_point else part
        out[key] = value.to(dtype).reshape(packed.shape[0], *tail)
    return out


def exchange_rows(
    batch: Dict[str, torch.Tensor], global_indices: torch.Tensor, keep: int, group=None
) -> Dict[str, torch.Tensor]:
    """This rank's ``keep`` rows of the globally kept set, moved between ranks as int32 token ids.

    Every rank contributes its whole gross batch to one all-gather (fixed size, so no host sync) and
    takes its slice ``global_indices[rank*keep:(rank+1)*keep]`` of the concatenation.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    gross = next(iter(batch.values())).shape[0]
    packed, layout = _pack(batch, gross)
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed, group=group)
    mine = global_indices[rank * keep : (rank + 1) * keep].to(packed.device)
    return _unpack(torch.cat(gathered).index_select(0, mine), layout)


def take_rows(batch: Dict[str, torch.Tensor], indices: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {k: v.index_select(0, indices.to(v.device)) for k, v in batch.items()}


def local_rows_kept(global_indices: torch.Tensor, rank: int, gross: int) -> torch.Tensor:
    """Bool [gross]: which of this rank's rows are in the global kept set."""
    local = global_indices - rank * gross
    local = torch.where((local >= 0) & (local < gross), local, torch.full_like(local, gross))
    mask = torch.zeros(gross + 1, dtype=torch.bool, device=global_indices.device)
    mask[local] = True  # rows of other ranks all land on the sentinel slot ``gross``
    return mask[:gross]
