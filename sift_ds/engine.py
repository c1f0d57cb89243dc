"""SiftEngine: a DeepSpeed engine with an early-exit selection stage before each training micro-step.

    gross batch --(adapter: prefix forward)--> hidden_k --(scorer)--> scores --(selector)--> kept rows
                --> DeepSpeed forward / backward / step (ZeRO-sharded AdamW, grad accumulation)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch
import torch.distributed as dist

from . import kernels, selector
from .adapters import EarlyExitAdapter, batch_rows
from .config import SiftConfig
from .scorer import early_exit_scores, labelled_positions


@dataclass
class Selection:
    """Result of one selection: the kept rows, their indices and this rank's gross-batch scores."""

    batch: Dict[str, torch.Tensor]  # kept rows, leading dim = train_micro_batch_size_per_gpu
    indices: torch.Tensor  # ascending; "local": into this rank's gross batch; "global": see selector
    scores: torch.Tensor  # float32 [gross] (NaN during warm-up or when SIFT is disabled: not scored)
    warmup: bool = False


class _StepTimer:
    """Selection and step wall time; CUDA events on the GPU, so timing adds no host sync."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start


class SiftEngine:
    """Wraps a ``DeepSpeedEngine``. Use ``train_step(gross_batch)``; ``select`` alone for inspection."""

    def __init__(
        self,
        engine,
        adapter: EarlyExitAdapter,
        config: SiftConfig,
        labels_key: str = "labels",
    ):
        self.engine = engine
        self.adapter = adapter
        self.config = config
        self.labels_key = labels_key
        self.micro_batch_size = engine.train_micro_batch_size_per_gpu()
        self.gross_batch_size = config.gross_batch_size(self.micro_batch_size)
        self.group = getattr(engine, "data_parallel_group", None) if dist.is_initialized() else None
        self.world_size, self.rank = (
            (dist.get_world_size(self.group), dist.get_rank(self.group)) if dist.is_initialized() else (1, 0)
        )
        if config.enabled:
            try:  # fail at start-up, not at the first step
                kernels.resolve_backend(config.kernel, torch.device(engine.device))
            except RuntimeError as err:
                raise ValueError(f"sift.kernel={config.kernel!r} cannot run here: {err}") from None
        self._timer = _StepTimer(torch.device(engine.device))
        self._pending: Optional[dict] = None  # telemetry of the last select
        self._last: Optional[dict] = None  # ... and of the last train_step, with its timings

    # ------------------------------------------------------------------ pass-through
    def __getattr__(self, name: str) -> Any:
        # Everything else (save_checkpoint, load_checkpoint, global_steps, module, ...) is DeepSpeed's.
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    @property
    def in_warmup(self) -> bool:
        return self.engine.global_steps < self.config.warmup_steps

    # ------------------------------------------------------------------ selection
    def select(self, batch: Mapping[str, torch.Tensor]) -> Selection:
        """Score this rank's gross batch with the early exit and keep the top rows (see SiftConfig)."""
        cfg, keep, gross = self.config, self.micro_batch_size, self.gross_batch_size
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
        positions = labelled_positions(labels) if cfg.enabled and labels.device.type == "cpu" else None
        device = self.engine.device
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        nan_scores = torch.full((gross,), float("nan"), dtype=torch.float32, device=device)

        if not cfg.enabled:
            indices = torch.arange(gross, device=device)
            return self._record(Selection(batch, indices, nan_scores), nan_scores, indices)

        # The warm-up subset is a pure function of (optimizer step, micro-step within it, rank).
        # DeepSpeed restores global_steps but not micro_steps on load; checkpoints are taken at
        # accumulation boundaries, where micro_steps % gas is 0 either way, so resume stays exact.
        step, micro = self.engine.global_steps, self.engine.micro_steps % self.engine.gradient_accumulation_steps()
        global_scope = cfg.scope == "global" and self.world_size > 1
        if self.in_warmup:
            local = selector.warmup_subset(gross, keep, cfg.seed, step, micro, self.rank).to(device)
            indices = (
                selector.warmup_global_indices(gross, keep, cfg.seed, step, micro, self.world_size).to(device)
                if global_scope
                else local
            )
            sel = Selection(selector.take_rows(batch, local), indices, nan_scores, warmup=True)
            return self._record(sel, nan_scores, local)

        scores = early_exit_scores(
            self.adapter, batch, cfg.exit_layer, cfg.criterion, cfg.kernel, positions, self.labels_key
        )
        if global_scope:
            indices = selector.global_topk(scores, keep, self.group, cfg.kernel)
            kept = selector.exchange_rows(batch, indices, keep, self.group)
            kept_mask = selector.local_rows_kept(indices, self.rank, gross)
        else:
            indices = selector.local_topk(scores, keep, cfg.kernel)
            kept = selector.take_rows(batch, indices)
            kept_mask = indices
        return self._record(Selection(kept, indices, scores), scores, kept_mask)

    def _record(self, sel: Selection, scores: torch.Tensor, kept: torch.Tensor) -> Selection:
        """Keep what the telemetry needs (device tensors, converted only when ``stats`` is read)."""
        if kept.dtype != torch.bool:
            mask = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
            mask[kept] = True
            kept = mask
        self._pending = {"scores": scores, "kept": kept, "warmup": sel.warmup}
        return sel

    # ------------------------------------------------------------------ training
    def train_step(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """select -> forward -> backward -> step on one gross micro-batch; returns the (detached) loss.

        DeepSpeed applies the optimizer step at gradient-accumulation boundaries only.
        """
        t0 = self._timer.now()
        sel = self.select(batch)
        t1 = self._timer.now()
        loss = _loss_of(self.engine(**sel.batch))
        self.engine.backward(loss)
        self.engine.step()
        t2 = self._timer.now()
        self._last = dict(self._pending, times=(t0, t1, t2))
        return loss.detach()

    @property
    def stats(self) -> Dict[str, float]:
        """Telemetry of the last ``train_step`` (host values; reading it is the only sync it costs)."""
        if self._last is None:
            return {}
        last = self._last
        scores, kept = last["scores"].float(), last["kept"]
        finite = torch.isfinite(scores)
        t0, t1, t2 = last["times"]
        select_s, step_s = self._timer.seconds(t0, t1), self._timer.seconds(t0, t2)
        return {
            "sift/score_kept_mean": _masked_mean(scores, kept & finite),
            "sift/score_dropped_mean": _masked_mean(scores, ~kept & finite),
            "sift/kept_fraction": kept.float().mean().item(),
            "sift/nonfinite_scores": float((~finite).sum().item()) if not last["warmup"] and self.config.enabled else 0.0,
            "sift/selection_time_s": select_s,
            "sift/selection_share": select_s / step_s if step_s > 0 else 0.0,
            "sift/warmup": float(last["warmup"]),
        }


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    n = mask.sum()
    return (values.masked_fill(~mask, 0.0).sum() / n).item() if n.item() > 0 else float("nan")


def _loss_of(output) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        loss = output[0]
    if loss is None:
        raise ValueError(
            "the model returned no loss: pass the labels in the batch (BertForPreTraining also needs "
            "next_sentence_label; use BertForMaskedLM for MLM only)"
        )
    return loss
