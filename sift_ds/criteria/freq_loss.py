"""Criterion ``freq_loss``: per scored token, the exit loss minus a baseline of its target id,
averaged over the row's scored tokens. The baseline is the corpus unigram ``-log p(id)``
(``frequency_baseline`` "unigram", a counts table from ``unigram.unigram_counts``) or a running mean
of the exit loss per target id (``RunningLossBaseline``, "running"): a row scores high for tokens
that are hard *for their id*, not for holding rare ids.

The running baseline is the criterion's state: identical on every data-parallel rank (its per-id
sums are all-reduced), saved and restored with each front-end's checkpoints (``state_dict`` /
``load_state_dict``) so that a resumed run scores exactly as the uninterrupted run did.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from ..config_io import key_field
from ..kernels import per_id_sums, reduce_to_sequences
from .base import Criterion, register_criterion
from .early_exit import vocab_size
from .unigram import load_unigram_counts, unigram_neg_log_probs

BASELINES = ("running", "unigram")


class RunningLossBaseline:
    """Per-vocabulary-id running mean of the exit loss, on the device: after each selection, every id
    it scored moves ``mean <- decay * mean + (1 - decay) * (the id's mean loss in that selection)``;
    an id's first selection sets its mean. An id not seen yet has no baseline: its tokens' excess loss
    is 0. The per-id sums are all-reduced over ``group``, so every rank holds the same means."""

    def __init__(self, vocab_size_: int, decay: float, device):
        self.decay = float(decay)
        self.mean = torch.zeros(vocab_size_, dtype=torch.float32, device=device)
        self.seen = torch.zeros(vocab_size_, dtype=torch.bool, device=device)

    def excess(self, targets: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """The tokens' losses minus their ids' means (0 for an id not seen yet)."""
        baseline = torch.where(self.seen.index_select(0, targets), self.mean.index_select(0, targets), losses)
        return losses - baseline

    def update(self, targets: torch.Tensor, losses: torch.Tensor, group=None) -> None:
        sums, counts = per_id_sums(targets, losses, self.mean.numel())
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            both = torch.stack([sums, counts])
            dist.all_reduce(both, group=group)
            sums, counts = both[0], both[1]
        scored = counts > 0
        batch_mean = sums / counts.clamp_min(1.0)
        moved = torch.where(self.seen, self.decay * self.mean.double() + (1.0 - self.decay) * batch_mean, batch_mean)
        self.mean = torch.where(scored, moved, self.mean.double()).float()
        self.seen = self.seen | scored

    def state_dict(self) -> dict:
        return {"mean": self.mean.cpu(), "seen": self.seen.cpu(), "decay": self.decay}

    def load_state_dict(self, state: Mapping) -> None:
        if state["mean"].shape != self.mean.shape:
            raise ValueError(f"the checkpoint's running baseline has {state['mean'].shape[0]} ids, the model's "
                             f"vocabulary {self.mean.shape[0]}")
        self.mean = state["mean"].to(self.mean.device, torch.float32)
        self.seen = state["seen"].to(self.seen.device, torch.bool)


class UnigramBaseline:
    """The corpus unigram ``-log p`` of each target id (a fixed table)."""

    def __init__(self, counts, device):
        self.table = unigram_neg_log_probs(counts).to(device)

    def excess(self, targets: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        return losses - self.table.index_select(0, targets)

    def update(self, targets, losses, group=None) -> None:
        pass


@dataclass(frozen=True)
class FrequencyOptions:
    frequency_baseline: str = key_field(
        "running", "freq_loss's per-token-id baseline: a running mean of the exit loss per target id (running) or "
                   "the corpus unigram -log p of the target id (unigram, from frequency_table)", BASELINES)
    frequency_table: str = key_field(
        "", "freq_loss with frequency_baseline unigram: a .npy file of token counts per vocabulary id "
            "(sift_ds.criteria.save_unigram_counts; the pretraining job writes it from its training split)")
    baseline_decay: float = key_field(
        0.9, "freq_loss with frequency_baseline running: the per-id mean moves by (1 - decay) towards the id's "
             "mean exit loss of each selection that scores it (0 <= decay < 1)")


@register_criterion
class FrequencyLoss(Criterion):
    name = "freq_loss"
    Options = FrequencyOptions
    statistic, per_token = "loss", True

    def __init__(self, options, config):
        super().__init__(options, config)
        self.baseline = None
        self._pending: Mapping = {}  # a loaded state, applied when the baseline is made

    @classmethod
    def check_options(cls, options, config) -> None:
        if not 0.0 <= float(options.baseline_decay) < 1.0:
            raise ValueError(f"sift.freq_loss.baseline_decay must be in [0, 1), got {options.baseline_decay}")
        if options.frequency_baseline == "unigram" and config.enabled and not options.frequency_table:
            raise ValueError("sift.freq_loss.frequency_table must name a .npy file of token counts when "
                             "sift.freq_loss.frequency_baseline is 'unigram'")

    def input_files(self):
        return {"sift.freq_loss.frequency_table": self.options.frequency_table}

    def baseline_for(self, adapter, device):
        """The baseline (made on first use, on ``device``, with any loaded state)."""
        if self.baseline is None:
            vocab = vocab_size(adapter)
            if self.options.frequency_baseline == "unigram":
                self.baseline = UnigramBaseline(load_unigram_counts(self.options.frequency_table, vocab), device)
            else:
                self.baseline = RunningLossBaseline(vocab, self.options.baseline_decay, device)
                if self._pending:
                    self.baseline.load_state_dict(self._pending)
        return self.baseline

    def score(self, exit, inputs):
        baseline = self.baseline_for(inputs.adapter, exit.values.device)
        scores = reduce_to_sequences(baseline.excess(exit.targets, exit.values), exit.rows, inputs.num_rows)
        if inputs.update:
            baseline.update(exit.targets, exit.values, inputs.group)
        return scores

    def state_dict(self):
        if isinstance(self.baseline, RunningLossBaseline):
            return self.baseline.state_dict()
        return dict(self._pending)

    def load_state_dict(self, state):
        if not state:
            return
        if self.options.frequency_baseline != "running":
            raise ValueError("the checkpoint holds a running frequency baseline, this run's "
                             f"sift.freq_loss.frequency_baseline is {self.options.frequency_baseline!r}")
        if self.baseline is not None:
            self.baseline.load_state_dict(state)
        else:
            self._pending = dict(state)
