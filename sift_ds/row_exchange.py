"""Moving the kept rows to the ranks that train them: row gathers on one rank, and the global-scope
exchange between data-parallel ranks (token ids travel as int32, all tensors in one collective)."""
from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist


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
    """This rank's ``keep`` rows of the globally kept set.

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
