"""Per-key sums and per-sequence means without atomics: a stable sort and a float64 cumsum, so that
every device, and a resumed CUDA run, sums in the same order (the selection's ranking, and so exact
resume, depends on it). No host sync. The torch scorer's per-sequence reduction and the criteria's
per-row and per-token-id statistics all go through ``per_id_sums``."""
from __future__ import annotations

import torch


def per_id_sums(targets: torch.Tensor, values: torch.Tensor, vocab_size_: int):
    """(float64 [V] sum of ``values`` per id in ``targets``, float64 [V] count per id): a stable sort and
    a float64 cumsum, no atomics, so the order of the sums is the same on every device; no host sync."""
    order = torch.argsort(targets, stable=True)
    ids, vals = targets.index_select(0, order), values.double().index_select(0, order)
    n = ids.numel()
    sums = torch.zeros(vocab_size_ + 1, dtype=torch.float64, device=targets.device)
    counts = torch.zeros_like(sums)
    if n == 0:
        return sums[:-1], counts[:-1]
    position = torch.arange(n, device=targets.device)
    first = torch.ones(n, dtype=torch.bool, device=targets.device)
    first[1:] = ids[1:] != ids[:-1]
    last = torch.ones_like(first)
    last[:-1] = first[1:]
    start = torch.cummax(torch.where(first, position, torch.zeros_like(position)), 0).values
    running = torch.cumsum(vals, 0)
    before = torch.where(start > 0, running.index_select(0, (start - 1).clamp_min(0)), torch.zeros_like(running))
    slot = torch.where(last, ids, torch.full_like(ids, vocab_size_))  # one write per id; the rest to a sentinel
    sums.scatter_(0, slot, running - before)
    counts.scatter_(0, slot, (position - start + 1).double())
    return sums[:-1], counts[:-1]


def reduce_to_sequences(token_scores: torch.Tensor, seq_index: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """float32 mean of ``token_scores`` per sequence id (``per_id_sums``); ``-inf`` for a sequence with
    no row. No host sync."""
    sums, counts = per_id_sums(seq_index, token_scores, num_seqs)
    return torch.where(counts > 0, sums / counts.clamp_min(1.0), torch.full_like(sums, float("-inf"))).float()
