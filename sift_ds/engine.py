"""SiftEngine: a DeepSpeed engine with an early-exit selection stage before each training micro-step.

    gross batch --(adapter: prefix forward)--> hidden_k --(scorer)--> scores --(selector)--> kept rows
                --> DeepSpeed forward / backward / step (ZeRO-sharded AdamW, grad accumulation)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch
import torch.distributed as dist

from . import kernels, probe, selector
from .adapters import EarlyExitAdapter
from .batching import batch_rows
from .config import SiftConfig
from .row_exchange import exchange_kept_rows, local_rows_kept, take_rows
from .scorer import check_labels, early_exit_scores, labelled_positions
from .seeding import derive_seed
from .telemetry import SelectionTelemetry

POSITION_STREAM = 0x9051_7105  # seed-sequence tag of the scored-position subsets


@dataclass
class Selection:
    """Result of one selection: the kept rows, their indices and this rank's gross-batch scores."""

    batch: Dict[str, torch.Tensor]  # kept rows, leading dim = train_micro_batch_size_per_gpu
    indices: torch.Tensor  # ascending; "local": into this rank's gross batch; "global": see selector
    scores: torch.Tensor  # float32 [gross] (NaN when not scored: warm-up, after the annealing, disabled)
    warmup: bool = False  # True when the rows are a random subset rather than selected by score
    # Scope "global" only: the global indices (the space of ``indices``) of the rows of ``batch``, in
    # order. A rank trains its own kept rows (up to the micro-batch) plus other ranks' surplus rows
    # (``row_exchange.exchange_plan``; ``row_exchange.trained_indices`` computes it from ``indices``),
    # not the slice ``indices[rank*M:(rank+1)*M]``.
    trained: Optional[torch.Tensor] = None


class SiftEngine:
    """Wraps a ``DeepSpeedEngine``. Use ``train_step(gross_batch)``; ``select`` alone for inspection.

    ``sift_config`` is the SIFT configuration; every other attribute (``config``, ``save_checkpoint``,
    ``global_steps``, ``module``, ...) is the wrapped DeepSpeed engine's.
    """

    def __init__(self, engine, adapter: EarlyExitAdapter, sift_config: SiftConfig, labels_key: str = "labels"):
        self.engine = engine
        self.adapter = adapter
        self.sift_config = sift_config
        self.labels_key = labels_key
        self.micro_batch_size = engine.train_micro_batch_size_per_gpu()
        self.gross_batch_size = sift_config.gross_batch_size(self.micro_batch_size)
        self.group = getattr(engine, "data_parallel_group", None) if dist.is_initialized() else None
        self.world_size, self.rank = (
            (dist.get_world_size(self.group), dist.get_rank(self.group)) if dist.is_initialized() else (1, 0)
        )
        if sift_config.enabled:
            try:  # fail at start-up, not at the first step
                kernels.resolve_backend(sift_config.kernel, torch.device(engine.device))
            except RuntimeError as err:
                raise ValueError(f"sift.kernel={sift_config.kernel!r} cannot run here: {err}") from None
        self.telemetry = SelectionTelemetry(torch.device(engine.device))

    # ------------------------------------------------------------------ pass-through
    def __getattr__(self, name: str) -> Any:
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    @property
    def selecting(self) -> bool:
        """Whether this optimizer step selects by score (not in the warm-up, nor after the annealing)."""
        return self.sift_config.selecting(self.engine.global_steps)

    @property
    def in_warmup(self) -> bool:
        return self.engine.global_steps < self.sift_config.warmup_steps

    # ------------------------------------------------------------------ selection
    def _position_seed(self) -> int:
        """Seed of the scored-position subset (``max_positions``): a pure function of (seed, step,
        micro-step, rank), like the selector's random choices."""
        micro = self.engine.micro_steps % self.engine.gradient_accumulation_steps()
        return derive_seed(self.sift_config.seed, self.engine.global_steps, micro, self.rank, POSITION_STREAM)

    def select(self, batch: Mapping[str, torch.Tensor]) -> Selection:
        """Score this rank's gross batch with the early exit and keep the top rows (see SiftConfig)."""
        cfg, keep, gross = self.sift_config, self.micro_batch_size, self.gross_batch_size
        rows = batch_rows(batch)
        if rows != gross:
            raise ValueError(
                f"expected a gross batch of {gross} rows per rank (train_micro_batch_size_per_gpu={keep} / "
                f"sift.keep_ratio={cfg.keep_ratio}), got {rows}"
            )
        labels = batch.get(self.labels_key)
        if cfg.enabled and labels is None:
            raise ValueError(f"the batch has no {self.labels_key!r} tensor to score the early exit with")
        # Labelled positions on the host copy (the data loader's), before the batch moves: no device sync.
        on_host = cfg.enabled and labels.device.type == "cpu"
        position_seed = self._position_seed() if cfg.enabled and cfg.max_positions else 0
        positions = labelled_positions(labels, self.adapter, cfg.max_positions, position_seed) if on_host else None
        if on_host:
            check_labels(self.adapter, labels)
        device = self.engine.device
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        nan_scores = torch.full((gross,), float("nan"), dtype=torch.float32, device=device)
        step = self.engine.global_steps
        ratio = cfg.keep_ratio_at(step) if cfg.enabled else 1.0

        if not cfg.enabled:
            indices = torch.arange(gross, device=device)
            self.telemetry.record(nan_scores, indices, False, ratio)
            return Selection(batch, indices, nan_scores)

        # Random choices are pure functions of (optimizer step, micro-step within it, rank).
        # DeepSpeed restores global_steps but not micro_steps on load; checkpoints are taken at
        # accumulation boundaries, where micro_steps % gas is 0 either way, so resume stays exact.
        micro = self.engine.micro_steps % self.engine.gradient_accumulation_steps()
        global_scope = cfg.scope == "global" and self.world_size > 1
        if not cfg.selecting(step):
            local = selector.warmup_subset(gross, keep, cfg.seed, step, micro, self.rank).to(device)
            indices = (
                selector.warmup_global_indices(gross, keep, cfg.seed, step, micro, self.world_size).to(device)
                if global_scope
                else local
            )
            self.telemetry.record(nan_scores, local, False, ratio)
            trained = local + self.rank * gross if global_scope else None
            return Selection(take_rows(batch, local), indices, nan_scores, warmup=True, trained=trained)

        scores = early_exit_scores(
            self.adapter, batch, cfg.exit_layer, cfg.criterion, cfg.kernel, positions, self.labels_key,
            check_targets=not on_host, max_positions=cfg.max_positions, seed=position_seed,
        )
        if global_scope:
            everyone = selector.gather_scores(scores, self.group)
            indices = selector.select_by_score(everyone, keep * self.world_size, cfg, step, micro)
            kept, trained = exchange_kept_rows(batch, indices, keep, self.group)  # only the surplus moves
            kept_mask = local_rows_kept(indices, self.rank, gross)
        else:
            indices = selector.select_by_score(scores, keep, cfg, step, micro)
            (kept, kept_mask), trained = (take_rows(batch, indices), indices), None
        self.telemetry.record(scores, kept_mask, True, ratio)
        return Selection(kept, indices, scores, trained=trained)

    # ------------------------------------------------------------------ training
    def train_step(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """select -> forward -> backward -> step on one gross micro-batch; returns the (detached) loss.

        DeepSpeed applies the optimizer step at gradient-accumulation boundaries only.
        """
        timer = self.telemetry.timer
        t0 = timer.now()
        sel = self.select(batch)
        t1 = timer.now()
        loss = _loss_of(self.engine(**sel.batch))
        self.engine.backward(loss)
        self.engine.step()
        self.telemetry.finish_step(t0, t1, timer.now())
        return loss.detach()

    @property
    def stats(self) -> Dict[str, float]:
        """Telemetry of the last ``train_step`` (host values; reading it is the only sync it costs)."""
        return self.telemetry.stats()

    def probe(self, batch: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """The early-exit fidelity probe on ``batch`` (see ``sift_ds.probe``); a collective."""
        batch = {k: v.to(self.engine.device) for k, v in batch.items() if torch.is_tensor(v)}
        return probe.fidelity(self.adapter, batch, self.sift_config, self.labels_key, self.group)


def _loss_of(output) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        loss = output[0]
    if loss is None:
        raise ValueError("the model returned no loss: the kept batch must carry the labels its forward needs")
    return loss
