"""Criterion ``reducible`` (RHO-LOSS, Mindermann et al. 2022): ``z(exit-k loss) - z(reference loss)``,
each term z-scored over the finite rows of this rank's gross batch. The reference loss is either
stored per block (the column ``sift_reference_loss``, from a score file) or computed online: a
reference model's own loss on the gross batch, with the batch's masks, every step.

The scoring core loads no model: the application that loads models registers a reference loader
(``register_reference_loader``; ``sift_ds.pretrain.reference_model`` loads Hugging Face models), which
gives the reference model's adapter for a directory and a device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List

import torch

from ..config_io import key_field
from .base import Criterion, StoredScores, register_criterion
from .columns import REFERENCE_COLUMN, REFERENCE_LOSS, stored_column, zscore
from .early_exit import early_exit_scores

_LOADERS: List[Callable] = []  # (path, device) -> the reference model's adapter


def register_reference_loader(loader: Callable) -> Callable:
    """Register the function that loads an online reference model: ``(directory, device) -> adapter``
    (the last registered one is used)."""
    _LOADERS.append(loader)
    return loader


def reducible_scores(exit_loss: torch.Tensor, reference_loss: torch.Tensor) -> torch.Tensor:
    """``z(exit_loss) - z(reference_loss)`` over one gross batch; ``-inf`` where either term is not finite."""
    score = zscore(exit_loss.float()) - zscore(reference_loss.float())
    return score.masked_fill(~torch.isfinite(score), float("-inf"))  # x - (-inf) is +inf, -inf - (-inf) NaN


def is_online(options) -> bool:
    """A reference model directory (else: a score file of stored losses)."""
    return os.path.isdir(options.reference)


@dataclass(frozen=True)
class ReducibleOptions:
    reference: str = key_field("", "criterion reducible: the reference model's directory (online) or a score file "
                                   "with its stored reference_loss per block")


@register_criterion
class ReducibleLoss(Criterion):
    name = "reducible"
    Options = ReducibleOptions
    statistic = "loss"
    probe_as = "loss"  # the probe batch has no stored column: its exit-k loss is probed

    @classmethod
    def check_options(cls, options, config) -> None:
        if not options.reference:
            raise ValueError("sift.reducible.reference is required by sift.criterion='reducible'")
        if not os.path.exists(options.reference):
            raise ValueError(f"sift.reducible.reference: no such file or directory: {options.reference}")

    def stored_scores(self):
        return None if is_online(self.options) else StoredScores(self.options.reference, REFERENCE_LOSS,
                                                                   REFERENCE_COLUMN)

    def input_files(self):
        return {"sift.reducible.reference": self.options.reference}

    def reference_loss(self, inputs) -> torch.Tensor:
        device = inputs.batch[inputs.labels_key].device
        if not is_online(self.options):
            return stored_column(inputs.columns, REFERENCE_COLUMN, device)
        if not _LOADERS:
            raise ValueError(f"sift.reducible.reference {self.options.reference} is a model directory, and no reference "
                             "loader is registered: import sift_ds.pretrain.reference_model (Hugging Face models) or "
                             "register one with sift_ds.criteria.register_reference_loader")
        adapter = _LOADERS[-1](self.options.reference, device)
        return early_exit_scores(adapter, inputs.batch, adapter.num_layers, "loss", self.config.kernel,
                                 labels_key=inputs.labels_key)

    def score(self, exit, inputs):
        return reducible_scores(exit, self.reference_loss(inputs))
