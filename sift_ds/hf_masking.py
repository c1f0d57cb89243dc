"""``SiftTrainer``'s training masks, drawn per step so that a resumed run draws what the uninterrupted
run drew.

transformers' ``DataCollatorForLanguageModeling`` masks inside the dataloader, from the global torch
RNG (or from one generator of its own that no checkpoint saves). Trainer's training dataloader runs
a batch ahead (accelerate's ``DataLoaderShard`` prefetches), and a resumed Trainer restores the RNG
state of its checkpoint only after it has fetched the first resumed batch: the resumed steps are
trained on other masks than the uninterrupted run's. ``SiftTrainer`` therefore splits the collator:
the dataloader only pads (``PaddingOnly``, the collator's own padding), and ``StepMasking`` draws the
masks when the step takes its batches, with the collator's own ``torch_mask_tokens`` (its
probabilities, its mask token) from a generator seeded by ``(seed, optimizer step, micro-step, rank)``,
as the pretraining job seeds its masks by the batch's place in the data order.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping

import torch
from transformers import DataCollatorForLanguageModeling
from transformers.data.data_collator import _torch_collate_batch, pad_without_fast_tokenizer_warning

from .seeding import derive_seed

MASK_STREAM = 0x4D41_534B  # seed-sequence tag that keeps the masks' seeds apart from the selector's


def masks_per_step(collator: Any) -> bool:
    """Whether ``collator`` is a plain ``DataCollatorForLanguageModeling`` that masks tensors (not a
    subclass, not whole-word masking) on a transformers whose masking draws from ``collator.generator``:
    the collators whose masks ``SiftTrainer`` draws per step. Others mask in the dataloader as before."""
    return (type(collator) is DataCollatorForLanguageModeling and collator.mlm and collator.return_tensors == "pt"
            and not getattr(collator, "whole_word_mask", False) and hasattr(collator, "generator"))


class PaddingOnly:
    """The training dataloader's ``collate_fn``: ``collator``'s padding (``pad_to_multiple_of`` and all)
    without its masking."""

    def __init__(self, collator: DataCollatorForLanguageModeling):
        self.collator = collator

    def __call__(self, examples: List[Any]) -> Dict[str, torch.Tensor]:
        tokenizer, multiple = self.collator.tokenizer, self.collator.pad_to_multiple_of
        if isinstance(examples[0], Mapping):
            return dict(pad_without_fast_tokenizer_warning(tokenizer, examples, return_tensors="pt",
                                                           pad_to_multiple_of=multiple))
        return {"input_ids": _torch_collate_batch(examples, tokenizer, pad_to_multiple_of=multiple)}


class StepMasking:
    """Masks a padded batch of ``PaddingOnly`` as ``collator`` would, drawing from a generator seeded by
    ``(seed, step, micro_step, rank)``: the masks are a pure function of the batch and its place."""

    def __init__(self, collator: DataCollatorForLanguageModeling, seed: int):
        self.masker = copy.copy(collator)  # the user's collator (its generator) stays untouched
        self.seed = seed

    def __call__(self, batch: Mapping[str, torch.Tensor], step: int, micro_step: int, rank: int) -> Dict[str, Any]:
        batch = dict(batch)
        special = batch.pop("special_tokens_mask", None)
        self.masker.generator = torch.Generator().manual_seed(
            derive_seed(self.seed, MASK_STREAM, step, micro_step, rank))
        batch["input_ids"], batch["labels"] = self.masker.torch_mask_tokens(
            batch["input_ids"].clone(), special_tokens_mask=special)
        return batch
