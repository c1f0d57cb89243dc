"""Batches for SIFT pretraining: dynamic masking that is deterministic and resumable, a gross-batch
loader sharded over data-parallel ranks, and validation batches with fixed masks.

Masking is transformers' ``DataCollatorForLanguageModeling`` (15 %, 80/10/10). Its randomness comes
from a generator seeded per batch from ``(seed, epoch, position, rank)``, so a batch's masks are a
function of where it is in the data order: a resumed run draws exactly the masks the uninterrupted
run drew, with no generator state to save.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling

from ..kernels import IGNORE_INDEX
from ..criteria.columns import ROW_COLUMNS
from ..seeding import derive_seed
from .models import takes_token_types

logger = logging.getLogger(__name__)

EVAL_STREAM = 0x5EED_E7A1  # seed-sequence tag that keeps validation masks apart from training masks


class MaskingCollator:
    """Masks a batch of fixed-length blocks with ``DataCollatorForLanguageModeling.torch_mask_tokens``
    (the collator's own masking, without its per-example padding pass: blocks are already full
    length), drawing from a generator seeded per call. ``drop``: block columns the model does not take
    (``token_type_ids`` for DistilBERT and ModernBERT)."""

    def __init__(self, tokenizer, mlm_probability: float = 0.15, drop: Sequence[str] = ()):
        self.drop = tuple(drop)
        self.collator = DataCollatorForLanguageModeling(
            tokenizer=tokenizer, mlm=True, mlm_probability=mlm_probability, return_tensors="pt"
        )
        # transformers >= 4.48 draws from ``self.generator`` when it is set; older versions use the
        # global torch RNG, which is then forked and seeded around the call.
        self._has_generator = hasattr(self.collator, "generator")

    def __call__(self, columns: Mapping[str, Any], *seed_key: int) -> Dict[str, torch.Tensor]:
        """``columns``: the block columns of a batch (arrays with a leading batch dimension, e.g. a
        ``datasets`` numpy-formatted slice); returns tensors with ``labels`` (IGNORE_INDEX where unmasked)."""
        batch = {k: torch.as_tensor(np.asarray(v)) for k, v in columns.items() if k not in self.drop}
        special = batch.pop("special_tokens_mask", None)
        inputs = batch["input_ids"].clone()
        seed = derive_seed(*seed_key)
        if self._has_generator:
            self.collator.generator = torch.Generator().manual_seed(seed)
            batch["input_ids"], batch["labels"] = self.collator.torch_mask_tokens(inputs, special)
        else:  # pragma: no cover - transformers < 4.48
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                batch["input_ids"], batch["labels"] = self.collator.torch_mask_tokens(inputs, special)
        return batch


class CausalCollator:
    """A batch of packed causal-LM blocks as tensors with ``labels = input_ids`` (HF's unshifted
    convention: the model and the early-exit adapter shift them); -100 only where ``attention_mask``
    is 0. A stored per-block score column (``sift_ds.criteria.columns.ROW_COLUMNS``) is passed on. A pure function of the batch: the seed key is accepted and unused."""

    def __call__(self, columns: Mapping[str, Any], *seed_key: int) -> Dict[str, torch.Tensor]:
        batch = {k: torch.as_tensor(np.asarray(v)) for k, v in columns.items()
                 if k in ("input_ids", "attention_mask") + ROW_COLUMNS}
        labels = batch["input_ids"].clone()
        if "attention_mask" in batch:
            labels.masked_fill_(batch["attention_mask"] == 0, IGNORE_INDEX)
        batch["labels"] = labels
        return batch


def make_collator(opts, tokenizer, model):
    """The batch maker of the objective: ``labels = input_ids`` for a causal LM, dynamic masking (of
    the columns the model takes) for a masked LM."""
    if opts.objective == "clm":
        return CausalCollator()
    unused = () if takes_token_types(model) else ("token_type_ids",)  # DistilBERT, ModernBERT
    return MaskingCollator(tokenizer, opts.mlm_probability, drop=unused)


def take(dataset, indices: Sequence[int]) -> Dict[str, np.ndarray]:
    """Rows ``indices`` of a ``datasets.Dataset`` of blocks, as one numpy array per column."""
    return dataset.with_format("numpy")[list(map(int, indices))]


class GrossBatchLoader:
    """Yields this rank's gross batches (``batch_size`` rows, i.e. micro-batch / keep_ratio) forever.

    Epoch ``e`` visits the blocks in the order ``permutation(seed, e)``; global batch ``p`` of the
    epoch is the slice ``[p * G, (p + 1) * G)`` of that order (``G = batch_size * world``) and rank
    ``r`` takes its ``r``-th ``batch_size`` rows, so ranks never share a row. The incomplete last
    global batch of an epoch is dropped. ``state_dict()`` = (epoch, position) resumes mid-epoch.
    """

    def __init__(self, dataset, collator: MaskingCollator, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, prefetch: bool = True):
        self.dataset, self.collator = dataset, collator
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = len(dataset) // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training split has {len(dataset)} blocks, fewer than one global gross batch "
                f"({batch_size} rows per rank x {world_size} ranks = {self.global_batch}); use more data, a "
                f"shorter --seq_len or a smaller batch"
            )
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = -1, None
        self._rows = dataset.with_format("numpy")
        # Prefetch: one worker thread reads and masks the next gross batch while the step runs. A
        # batch is a pure function of (seed, epoch, position), so what is prefetched is exactly what
        # would be made on demand; state_dict() counts consumed batches only.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sift-prefetch") if prefetch else None
        self._ahead: Dict[Tuple[int, int, int], Future] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._order_epoch = epoch
        return self._order

    def indices(self, epoch: int, position: int) -> np.ndarray:
        """This rank's rows of global batch ``position`` of ``epoch``."""
        start = position * self.global_batch + self.rank * self.batch_size
        return self.order(epoch)[start : start + self.batch_size]

    def batch_at(self, epoch: int, position: int) -> Dict[str, torch.Tensor]:
        """This rank's masked gross batch ``position`` of ``epoch`` (a pure function of them and the seed)."""
        rows = self._rows[self.indices(epoch, position).tolist()]
        return self.collator(rows, self.seed, epoch, position, self.rank)

    def _following(self, epoch: int, position: int) -> Tuple[int, int]:
        return (epoch + 1, 0) if position + 1 >= self.batches_per_epoch else (epoch, position + 1)

    def next_batch(self) -> Dict[str, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        epoch, position = self.epoch, self.position
        ahead = self._ahead.pop((self.seed, epoch, position), None)
        if ahead is None and self._pool is not None:  # the collator only ever runs in the worker
            ahead = self._pool.submit(self.batch_at, epoch, position)
        batch = ahead.result() if ahead is not None else self.batch_at(epoch, position)
        self.position += 1
        if self._pool is not None:
            self._ahead.clear()
            nxt = self._following(epoch, position)
            self._ahead[(self.seed, *nxt)] = self._pool.submit(self.batch_at, *nxt)
        return batch

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    @property
    def samples_seen(self) -> int:
        """Gross rows consumed on all ranks (the SIFT-scored samples, before selection)."""
        return (self.epoch * self.batches_per_epoch + self.position) * self.global_batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "global_batch": self.global_batch,
                "num_blocks": len(self.dataset), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_blocks") != len(self.dataset):
            raise ValueError(
                f"the checkpoint's data position is for a training split of {state.get('num_blocks')} blocks, "
                f"this run's has {len(self.dataset)}: same corpus, tokenizer, --seq_len and --objective are "
                f"needed to resume"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if state.get("global_batch") != self.global_batch:
            # Another world size or batch: continue from the same sample offset in the epoch's order.
            samples = position * int(state["global_batch"])
            position = -(-samples // self.global_batch)
            logger.warning("global gross batch changed from %s to %s: resuming epoch %d at batch %d",
                           state.get("global_batch"), self.global_batch, epoch, position)
        self.seed = int(state.get("seed", self.seed))
        self.epoch, self.position = epoch, position
        self._ahead.clear()  # prefetched for another position


def fixed_eval_batches(dataset, collator: MaskingCollator, batch_size: int, rank: int = 0, world_size: int = 1,
                       seed: int = 0) -> List[Dict[str, torch.Tensor]]:
    """This rank's validation batches, masked once with fixed seeds (same masks at every evaluation).

    Masks depend only on ``seed`` and the row index (chunks of ``batch_size`` rows over the whole
    split), so the metrics do not change with the world size. Rank ``r`` takes rows ``r::world``;
    ranks with one row fewer get a filler row with no labels, so every rank runs the same number of
    forward passes (ZeRO-3 gathers parameters collectively) and the filler adds nothing.
    """
    n = len(dataset)
    masked: List[Dict[str, torch.Tensor]] = []
    for chunk, start in enumerate(range(0, n, batch_size)):
        masked.append(collator(take(dataset, range(start, min(n, start + batch_size))), seed, EVAL_STREAM, chunk))
    full = {k: torch.cat([b[k] for b in masked]) for k in masked[0]}
    mine = torch.arange(rank, n, world_size)
    per_rank = -(-n // world_size)
    local = {k: v.index_select(0, mine) for k, v in full.items()}
    if len(mine) < per_rank:
        filler = {k: v[:1].clone() for k, v in full.items()}
        filler["labels"].fill_(IGNORE_INDEX)
        if "next_sentence_label" in filler:
            filler["next_sentence_label"].fill_(IGNORE_INDEX)
        local = {k: torch.cat([v, filler[k]]) for k, v in local.items()}
    return [{k: v[i : i + batch_size] for k, v in local.items()} for i in range(0, per_rank, batch_size)]
