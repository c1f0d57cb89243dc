"""The selection core, shared by every front-end (DeepSpeed ``SiftEngine``, ``sift_ds.hf.SiftTrainer``,
``sift_ds.megatron.Sift``); it knows no training framework:

    gross batch --(adapter: prefix forward)--> hidden_k --(scorer)--> scores --(selector)--> kept rows
                --(row exchange, scope "global")--> the rows this rank trains

``select(adapter, config, batch, step, micro_step, keep, group)`` holds the warm-up, the selector's
knobs, the scope and the exchange, and returns one ``Selection`` with its telemetry pairs. Every
random choice is a pure function of ``(config.seed, step, micro_step, rank)``: a resumed run selects
exactly what the uninterrupted run selected. The hot path reads nothing back to the host but the
global scope's ``world`` kept counts: the labelled positions are found (and the labels checked) on
the loader's host copy of the batch before it moves to the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
import torch.distributed as dist

from . import criteria, importance, kernels, selector
from .adapters import EarlyExitAdapter, aligned_labels
from .batching import batch_rows
from .config import SiftConfig
from .criteria.columns import split_row_columns
from .criteria.early_exit import check_labels, labelled_positions
from .row_exchange import exchange_kept_rows, local_rows_kept, take_rows
from .seeding import derive_seed
from .telemetry import selection_stats

POSITION_STREAM = 0x9051_7105  # seed-sequence tag of the scored-position subsets


@dataclass
class Selection:
    """Result of one selection: the kept rows this rank trains, their indices and this rank's scores."""

    batch: Dict[str, torch.Tensor]  # the rows this rank trains, leading dim = keep
    indices: torch.Tensor  # ascending; scope "local": into this rank's gross batch; "global": see selector
    scores: torch.Tensor  # float32 [gross] (NaN when not scored: warm-up, after the annealing, disabled)
    kept: torch.Tensor  # bool [gross]: which of this rank's gross rows are kept (by any rank)
    warmup: bool = False  # True when the rows are a random subset rather than selected by score
    by_score: bool = False  # True when they were selected by score (not warm-up, annealed out, or disabled)
    # Scope "global" only: the global indices (the space of ``indices``) of the rows of ``batch``, in
    # order. A rank trains its own kept rows (up to ``keep``) plus other ranks' surplus rows
    # (``row_exchange.exchange_plan``; ``row_exchange.trained_indices`` computes it from ``indices``),
    # not the slice ``indices[rank*keep:(rank+1)*keep]``.
    trained: Optional[torch.Tensor] = None
    step: int = 0  # the optimizer step and micro-step within it that the random choices followed
    micro_step: int = 0
    keep_ratio: float = 1.0  # the effective keep ratio of the step (annealing)
    # A criterion that samples rows (importance) only: float32 [keep], the factor of each trained row's
    # token losses in the training loss (``sift_ds.importance``; the loss's token-mean normalisation is
    # unchanged). None: every row counts once (top-k criteria, the warm-up).
    weights: Optional[torch.Tensor] = None

    def stats(self) -> Dict[str, torch.Tensor]:
        """The ``sift/*`` statistics as ``[sum, count]`` device pairs (``telemetry.selection_stats``)."""
        return selection_stats(self.scores, self.kept, self.by_score, self.keep_ratio)


def data_parallel(group=None):
    """(world size, rank) of ``group`` (None: the default group), (1, 0) without a process group."""
    if not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def position_seed(config: SiftConfig, step: int, micro_step: int, rank: int) -> int:
    """Seed of the scored-position subset (``max_positions``): a pure function of (seed, step,
    micro-step, rank), like the selector's random choices."""
    return derive_seed(config.seed, step, micro_step, rank, POSITION_STREAM)


def select(adapter: EarlyExitAdapter, config: SiftConfig, batch: Mapping[str, torch.Tensor], step: int,
           micro_step: int, keep: int, group=None, *, device: Optional[torch.device] = None,
           labels_key: str = "labels") -> Selection:
    """Score this rank's gross batch with the early exit and keep ``keep`` rows per rank (see SiftConfig).

    ``step``: the optimizer step (warm-up, annealing); ``micro_step``: the micro-step within it;
    ``group``: the data-parallel group (scope "global" ranks over it; None: the default group);
    ``device``: where the batch goes (default: where it is). A collective over ``group`` under
    scope "global", and over the adapter's ``vocab_group`` when it has one.
    """
    gross = batch_rows(batch)
    batch, columns = split_row_columns(batch)  # stored per-row scores: read here, never given to the model
    if not 0 < keep <= gross:
        raise ValueError(f"cannot keep {keep} rows of a gross batch of {gross}")
    labels = batch.get(labels_key)
    if config.enabled and labels is None:
        raise ValueError(f"the batch has no {labels_key!r} tensor to score the early exit with")
    world, rank = data_parallel(group)
    subset_seed = position_seed(config, step, micro_step, rank) if config.enabled and config.max_positions else 0
    # The labels aligned once (the adapter's targets of each position); the labelled positions found on
    # the host copy (the data loader's), before the batch moves: no device sync.
    aligned = aligned_labels(adapter, labels) if config.enabled else None
    on_host = config.enabled and labels.device.type == "cpu"
    positions = labelled_positions(adapter, batch, labels_key, config.max_positions, subset_seed,
                                   aligned) if on_host else None
    if on_host:
        check_labels(adapter, aligned, positions)
    device = device if device is not None else next(v.device for v in batch.values() if torch.is_tensor(v))
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
    aligned = aligned.to(device, non_blocking=True) if aligned is not None else None
    nan_scores = torch.full((gross,), float("nan"), dtype=torch.float32, device=device)
    common = dict(step=step, micro_step=micro_step)

    if not config.enabled:
        everything = torch.ones(gross, dtype=torch.bool, device=device)
        return Selection(batch, torch.arange(gross, device=device), nan_scores, everything, keep_ratio=1.0, **common)

    global_scope = config.scope == "global" and world > 1
    common["keep_ratio"] = config.keep_ratio_at(step)
    if not config.selecting(step):  # warm-up / after the annealing: this rank's own random subset, nothing moves
        local = selector.warmup_subset(gross, keep, config.seed, step, micro_step, rank).to(device)
        indices = (selector.warmup_global_indices(gross, keep, config.seed, step, micro_step, world).to(device)
                   if global_scope else local)
        trained = local + rank * gross if global_scope else None
        return Selection(take_rows(batch, local), indices, nan_scores, local_rows_kept(local, 0, gross), warmup=True,
                         trained=trained, **common)

    scores = criteria.criterion_scores(adapter, config, batch, positions, labels_key, check_targets=not on_host,
                                      seed=subset_seed, group=group, update=True, columns=columns, aligned=aligned)
    if config.criterion_class.rows == criteria.SAMPLED:
        return _sampled_selection(adapter, config, batch, aligned, scores, keep, group, world if global_scope else 1,
                                  rank, common)
    if global_scope:
        everyone = selector.gather_scores(scores, group)
        indices = selector.select_by_score(everyone, keep * world, config, step, micro_step)
        kept, trained = exchange_kept_rows(batch, indices, keep, group)  # only the surplus moves
        kept_mask = local_rows_kept(indices, rank, gross)
    else:
        indices = selector.select_by_score(scores, keep, config, step, micro_step)
        kept, trained, kept_mask = take_rows(batch, indices), None, local_rows_kept(indices, 0, gross)
    return Selection(kept, indices, scores, kept_mask, trained=trained, by_score=True, **common)


def labelled_counts(adapter: EarlyExitAdapter, batch: Mapping[str, torch.Tensor],
                    aligned: torch.Tensor) -> torch.Tensor:
    """int64 [B]: each row's tokens in the training loss (the aligned labels other than -100, or the
    adapter's ``labelled_mask``), counted on the device (no host sync)."""
    hook = getattr(adapter, "labelled_mask", None)
    mask = hook(batch) != 0 if hook is not None else aligned != kernels.IGNORE_INDEX
    return mask.sum(dim=1)


def _sampled_selection(adapter, config, batch, aligned, scores, keep, group, world, rank, common):
    """Rows drawn with replacement by the criterion's sampling probabilities (over every rank's rows
    when ``world`` > 1: scope "global"), with their loss weights (``sift_ds.importance``)."""
    criteria.check_model(adapter, config)
    criterion = criteria.criterion_of(adapter, config)
    counts = labelled_counts(adapter, batch, aligned)
    if world > 1:
        everyone, counts = selector.gather_scores(scores, group), selector.gather_scores(counts, group)
        p = criterion.sampling_probabilities(everyone)
        indices = importance.draw_rows(p, keep * world, config.seed, common["step"], common["micro_step"])
        kept, trained = exchange_kept_rows(batch, indices, keep, group)
        kept_mask = local_rows_kept(indices, rank, batch_rows(batch))
    else:
        p = criterion.sampling_probabilities(scores)
        indices = importance.draw_rows(p, keep, config.seed, common["step"], common["micro_step"], rank)
        kept, trained, kept_mask = take_rows(batch, indices), None, local_rows_kept(indices, 0, batch_rows(batch))
    weights = importance.loss_weights(p, counts, trained if trained is not None else indices)
    return Selection(kept, indices, scores, kept_mask, trained=trained, by_score=True, weights=weights, **common)
