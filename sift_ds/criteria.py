"""The selection criteria beyond the kernels' mean loss and entropy, as per-row scores:

* ``freq_loss``: per scored token, the exit loss minus a baseline of its target id, averaged over
  the row's scored tokens. The baseline is the corpus unigram ``-log p(id)`` (``frequency_baseline``
  "unigram", a counts table from ``unigram_counts``) or a running mean of the exit loss per target
  id (``RunningLossBaseline``, "running"): a row scores high for tokens that are hard *for their id*,
  not for holding rare ids.
* ``importance``: the mean over the row's scored tokens of ``||softmax(z) - onehot(y)||_2``, the
  gradient-norm bound that ``sift_ds.importance`` samples rows by.
* ``stored`` and ``reducible``: a score stored per block, or the exit loss against a reference
  model's loss (``sift_ds.row_scores``, which reads the gross batch's stored per-row columns).

The running baseline is state: one ``RunningLossBaseline`` per adapter (``baseline_of``), identical
on every data-parallel rank (its per-id sums are all-reduced), saved and restored with the
pretraining job's checkpoints (``state_dict`` / ``load_state_dict``) so that a resumed run scores
exactly as the uninterrupted run did.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist

from .adapters import EarlyExitAdapter
from .config import FREQUENCY_LOSS, IMPORTANCE, REDUCIBLE, STORED, SiftConfig
from .row_scores import criterion_scores
from .scorer import GRADIENT_NORM, early_exit_scores, early_exit_token_statistic, vocab_size

_STATE_ATTRIBUTE = "_sift_criterion_state"  # where an adapter holds its criterion's state


# ---------------------------------------------------------------------------------- unigram table
def unigram_counts(token_ids, vocab_size_: int) -> np.ndarray:
    """int64 [vocab_size]: how often each id occurs in ``token_ids`` (any iterable of int arrays or
    lists, e.g. the tokenized training split's ``input_ids``)."""
    counts = np.zeros(vocab_size_, dtype=np.int64)
    for ids in token_ids:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size_):
            raise ValueError(f"token id {int(ids.min() if ids.min() < 0 else ids.max())} is outside the vocabulary "
                             f"[0, {vocab_size_})")
        counts += np.bincount(ids, minlength=vocab_size_)
    return counts


def save_unigram_counts(path: str, counts: np.ndarray) -> None:
    """Write a counts table (``unigram_counts``) as a ``.npy`` file, atomically."""
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, np.asarray(counts, dtype=np.int64), allow_pickle=False)
    os.replace(tmp, path)


def load_unigram_counts(path: str, vocab_size_: int) -> np.ndarray:
    """The counts table of ``path`` (``sift.frequency_table``), checked against the model's vocabulary."""
    try:
        counts = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"sift.frequency_table {path}: cannot read a .npy counts table ({err})") from None
    if counts.ndim != 1 or counts.shape[0] != vocab_size_ or counts.dtype.kind not in "iu" or (counts < 0).any():
        raise ValueError(f"sift.frequency_table {path}: expected {vocab_size_} non-negative integer counts (one per "
                         f"vocabulary id), got {counts.dtype} of shape {counts.shape}")
    return counts


def unigram_neg_log_probs(counts) -> torch.Tensor:
    """float32 [V]: ``-log p(id)`` of the add-one smoothed unigram distribution ``(c + 1) / (sum c + V)``
    (an id never seen in the corpus gets a finite baseline)."""
    c = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    return (torch.log(c.sum() + c.numel()) - torch.log1p(c)).float()


# ------------------------------------------------------------------------------- running baseline
def per_id_sums(targets: torch.Tensor, values: torch.Tensor, vocab_size_: int):
    """(float64 [V] sum of ``values`` per target id, float64 [V] count per id), deterministic on every
    device (a stable sort and a float64 cumsum; no atomics) and without a host sync."""
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


def baseline_of(adapter: EarlyExitAdapter, config: SiftConfig, device) -> object:
    """The adapter's frequency baseline for ``config`` (made on first use and kept on the adapter)."""
    state = getattr(adapter, _STATE_ATTRIBUTE, None)
    if state is None:
        vocab = vocab_size(adapter)
        if config.frequency_baseline == "unigram":
            state = UnigramBaseline(load_unigram_counts(config.frequency_table, vocab), device)
        else:
            state = RunningLossBaseline(vocab, config.baseline_decay, device)
        setattr(adapter, _STATE_ATTRIBUTE, state)
    return state


def state_dict(adapter: EarlyExitAdapter) -> Optional[dict]:
    """The running baseline's state for a checkpoint (None when the adapter keeps none)."""
    state = getattr(adapter, _STATE_ATTRIBUTE, None)
    return state.state_dict() if isinstance(state, RunningLossBaseline) else None


def load_state_dict(adapter: EarlyExitAdapter, config: SiftConfig, state: Optional[Mapping], device) -> None:
    """Restore ``state_dict``'s result (a no-op for None: a checkpoint taken before any selection)."""
    if state is not None:
        baseline = baseline_of(adapter, config, device)
        if not isinstance(baseline, RunningLossBaseline):
            raise ValueError("the checkpoint holds a running frequency baseline, this run's "
                             f"sift.frequency_baseline is {config.frequency_baseline!r}")
        baseline.load_state_dict(state)


# ------------------------------------------------------------------------------------- scoring
def row_means(token: torch.Tensor, seq: torch.Tensor, rows: int) -> torch.Tensor:
    """float32 [rows]: the mean of ``token`` per row (``-inf`` for a row with none), summed in a fixed
    order on every device (``per_id_sums``: no atomics, so a resumed CUDA run sums as the first did)."""
    sums, counts = per_id_sums(seq, token, rows)
    return torch.where(counts > 0, sums / counts.clamp_min(1.0), torch.full_like(sums, float("-inf"))).float()


@torch.no_grad()
def sequence_scores(adapter: EarlyExitAdapter, config: SiftConfig, batch: Mapping[str, torch.Tensor],
                    positions: Optional[tuple] = None, labels_key: str = "labels", check_targets: bool = True,
                    seed: int = 0, group=None, update: bool = False,
                    max_positions: Optional[int] = None, columns: Optional[Mapping[str, torch.Tensor]] = None
                    ) -> torch.Tensor:
    """float32 [B]: the rows' scores under ``config.criterion`` (``-inf`` for a row with no scored
    token); the arguments are ``scorer.early_exit_scores``'s (``max_positions`` None: the config's).
    ``update``: the selection's call, which moves the running baseline (a collective over ``group``)
    after scoring with it. ``columns``: the gross batch's stored per-row columns, which criteria
    stored and reducible read (``sift_ds.row_scores``)."""
    common = dict(positions=positions, labels_key=labels_key, check_targets=check_targets,
                  max_positions=config.max_positions if max_positions is None else max_positions, seed=seed)
    if config.criterion in (STORED, REDUCIBLE):
        exit_loss = None if config.criterion == STORED else early_exit_scores(
            adapter, batch, config.exit_layer, "loss", config.kernel, **common)
        return criterion_scores(config, exit_loss, batch, columns or {}, labels_key)
    if config.criterion not in (FREQUENCY_LOSS, IMPORTANCE):
        return early_exit_scores(adapter, batch, config.exit_layer, config.criterion, config.kernel, **common)
    rows = batch[labels_key].shape[0]
    if config.criterion == IMPORTANCE:
        token, _, seq = early_exit_token_statistic(adapter, batch, config.exit_layer, GRADIENT_NORM, config.kernel,
                                                   **common)
        return row_means(token, seq, rows)
    loss, targets, seq = early_exit_token_statistic(adapter, batch, config.exit_layer, "loss", config.kernel, **common)
    baseline = baseline_of(adapter, config, loss.device)
    scores = row_means(baseline.excess(targets, loss), seq, rows)
    if update:
        baseline.update(targets, loss, group)
    return scores
