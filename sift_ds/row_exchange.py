"""Moving the kept rows to the ranks that train them: row gathers on one rank, and the global-scope
exchange between data-parallel ranks.

Global scope keeps the top ``world x keep`` rows of all ranks' gross batches. Each rank trains up to
``keep`` of its own kept rows where they are; only the surplus moves, to the ranks with a deficit, in
one ``all_to_all`` with per-destination counts (token ids travel as int32, all tensors of a row in one
packed row). Every rank derives the same plan from the kept indices, so nothing but the moving rows
is sent; the kept count per rank (``world`` integers) is read on the host to size the transfers.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist


def pack_rows(batch: Dict[str, torch.Tensor], rows: int):
    """All batch tensors as one int32 [rows, width] tensor (one collective instead of one per key)."""
    cols, layout = [], []
    for key, t in batch.items():
        flat = t.reshape(rows, math.prod(t.shape[1:]))
        if t.is_floating_point():
            packed = flat.float().view(torch.int32)
        else:  # token ids, labels, masks: int32 is wide enough, and halves the traffic of int64
            packed = flat.to(torch.int32)
        cols.append(packed)
        layout.append((key, t.dtype, tuple(t.shape[1:]), packed.shape[1]))
    return torch.cat(cols, dim=1), layout


def unpack_rows(packed: torch.Tensor, layout) -> Dict[str, torch.Tensor]:
    out, col = {}, 0
    for key, dtype, tail, width in layout:
        part = packed[:, col : col + width]
        col += width
        value = part.contiguous().view(torch.float32) if dtype.is_floating_point else part
        out[key] = value.to(dtype).reshape(packed.shape[0], *tail)
    return out


def row_bytes(batch: Dict[str, torch.Tensor]) -> int:
    """Bytes one row of ``batch`` occupies on the wire (the packed int32 row)."""
    return 4 * sum(math.prod(t.shape[1:]) for t in batch.values())


def exchange_plan(kept_per_rank: List[int], keep: int) -> List[List[int]]:
    """``plan[src][dst]``: how many kept rows rank ``src`` sends to rank ``dst``.

    Rank ``r`` holds ``kept_per_rank[r]`` of the globally kept rows and must train ``keep``. It keeps
    ``min(kept, keep)`` of them; surplus rows, taken in ascending global order, fill the deficit slots
    in rank order. A pure function of its arguments: every rank computes the same plan.
    """
    world = len(kept_per_rank)
    if sum(kept_per_rank) != keep * world:
        raise ValueError(f"{sum(kept_per_rank)} kept rows cannot fill {world} ranks x {keep}")
    surplus = [max(c - keep, 0) for c in kept_per_rank]
    deficit = [max(keep - c, 0) for c in kept_per_rank]
    plan = [[0] * world for _ in range(world)]
    dst = 0
    for src in range(world):
        while surplus[src]:
            while not deficit[dst]:
                dst += 1
            n = min(surplus[src], deficit[dst])
            plan[src][dst] += n
            surplus[src] -= n
            deficit[dst] -= n
    return plan


class _Assignment:
    """Which kept rows rank ``rank`` trains, from the kept indices alone (identical on every rank)."""

    def __init__(self, global_indices: torch.Tensor, keep: int, rank: int, world: int, gross: int):
        owner = torch.div(global_indices, gross, rounding_mode="floor")
        counts = torch.zeros(world, dtype=torch.int64, device=global_indices.device)
        counts.index_add_(0, owner, torch.ones_like(owner))
        counts = counts.tolist()  # the only host read: world integers
        self.plan = exchange_plan(counts, keep)
        self.indices, self.keep, self.rank, self.world, self.gross = global_indices, keep, rank, world, gross
        self.starts = [sum(counts[:r]) for r in range(world)]  # ascending indices: owners are contiguous
        self.own = global_indices[self.starts[rank] : self.starts[rank] + min(counts[rank], keep)]
        self.received = [self.surplus(src, rank) for src in range(world)]

    def surplus(self, src: int, dst: int) -> torch.Tensor:
        """Global indices of the surplus rows ``src`` sends to ``dst`` (its kept rows past ``keep``)."""
        first = self.starts[src] + self.keep + sum(self.plan[src][:dst])
        return self.indices[first : first + self.plan[src][dst]]

    @property
    def moves(self) -> bool:
        return any(n for row in self.plan for n in row)


def trained_indices(global_indices: torch.Tensor, keep: int, rank: int, world: int, gross: int) -> torch.Tensor:
    """Ascending global indices of the ``keep`` rows rank ``rank`` trains under ``exchange_rows``."""
    a = _Assignment(global_indices, keep, rank, world, gross)
    return torch.sort(torch.cat([a.own] + a.received)).values


def exchange_kept_rows(
    batch: Dict[str, torch.Tensor], global_indices: torch.Tensor, keep: int, group=None
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """This rank's ``keep`` rows of the globally kept set, and their global indices (ascending).

    ``global_indices`` (ascending, identical on every rank) index the concatenation of all ranks'
    gross batches in rank order. A rank trains its own kept rows (up to ``keep``: the lowest
    indices) plus the surplus rows of other ranks that ``exchange_plan`` assigns to it; it receives
    exactly its deficit. One host read of ``world`` counts; no collective when nothing moves.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    gross = next(iter(batch.values())).shape[0]
    a = _Assignment(global_indices, keep, rank, world, gross)
    device = next(iter(batch.values())).device
    kept = take_rows(batch, a.own - rank * gross)
    if a.moves:
        send = torch.cat([a.surplus(rank, dst) for dst in range(world)]) - rank * gross
        packed, layout = pack_rows(take_rows(batch, send), send.numel())
        out_splits = [a.plan[src][rank] for src in range(world)]
        incoming = packed.new_empty((sum(out_splits), packed.shape[1]))
        dist.all_to_all_single(incoming, packed.contiguous(), out_splits, a.plan[rank], group=group)
        if incoming.shape[0]:
            moved = unpack_rows(incoming, layout)
            kept = {k: torch.cat([v, moved[k].to(v.device)]) for k, v in kept.items()}
    trained = torch.cat([a.own] + a.received)
    order = torch.argsort(trained)  # the trained rows in ascending global order
    return take_rows(kept, order.to(device)), trained.index_select(0, order)


def exchange_rows(
    batch: Dict[str, torch.Tensor], global_indices: torch.Tensor, keep: int, group=None
) -> Dict[str, torch.Tensor]:
    """``exchange_kept_rows`` without the indices: which rows a rank trains is ``trained_indices``."""
    return exchange_kept_rows(batch, global_indices, keep, group)[0]


def take_rows(batch: Dict[str, torch.Tensor], indices: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {k: v.index_select(0, indices.to(v.device)) for k, v in batch.items()}


def local_rows_kept(global_indices: torch.Tensor, rank: int, gross: int) -> torch.Tensor:
    """Bool [gross]: which of this rank's rows are in the global kept set."""
    local = global_indices - rank * gross
    local = torch.where((local >= 0) & (local < gross), local, torch.full_like(local, gross))
    mask = torch.zeros(gross + 1, dtype=torch.bool, device=global_indices.device)
    mask[local] = True  # rows of other ranks all land on the sentinel slot ``gross``
    return mask[:gross]
