"""Per-row scores that do not come from the early exit alone: criteria ``stored`` and ``reducible``.

* ``stored`` (offline sifting): a score computed once per training block by ``launch/score_corpus.py``
  rides in the gross batch as the float column ``sift_score``; the selection runs no model.
* ``reducible`` (RHO-LOSS, Mindermann et al. 2022): ``z(exit-k loss) - z(reference loss)``, each term
  z-scored over the finite rows of this rank's gross batch. The reference loss is either stored per
  block (the column ``sift_reference_loss``) or computed online: the reference model's own loss on
  the gross batch, with the batch's masks, every step.

The data loader adds the columns (``ROW_COLUMNS``); the selection core takes them out of the batch
before anything reaches the model.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Tuple

import torch
from transformers import AutoModelForMaskedLM

from .adapters import detect_adapter
from .config import REDUCIBLE, STORED, SiftConfig
from .scorer import early_exit_scores

SCORE_COLUMN = "sift_score"  # criterion stored: the block's stored score
REFERENCE_COLUMN = "sift_reference_loss"  # criterion reducible, stored reference: the block's reference loss
ROW_COLUMNS = (SCORE_COLUMN, REFERENCE_COLUMN)

_REFERENCE_MODELS: Dict[Tuple[str, str], tuple] = {}


def split_row_columns(batch: Mapping[str, torch.Tensor]):
    """(the batch without the stored columns, the stored columns): the model never sees the latter."""
    return ({k: v for k, v in batch.items() if k not in ROW_COLUMNS},
            {k: v for k, v in batch.items() if k in ROW_COLUMNS})


def stored_column(columns: Mapping[str, torch.Tensor], name: str, device) -> torch.Tensor:
    if name not in columns:
        raise ValueError(f"the gross batch has no {name!r} column: the data loader attaches it from the score file "
                         f"(sift.score_file / sift.reference); a front-end without one must add it to each row")
    return columns[name].to(device=device, dtype=torch.float32, non_blocking=True)


def zscore(values: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over the finite entries (population std; 0 where the std is 0); the
    non-finite entries become ``-inf``. No host sync."""
    finite = torch.isfinite(values)
    count = finite.sum().clamp(min=1)
    x = torch.where(finite, values, torch.zeros_like(values))
    mean = x.sum() / count
    centred = torch.where(finite, values - mean, torch.zeros_like(values))
    std = (centred.pow(2).sum() / count).sqrt()
    z = torch.where(std > 0, centred / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(centred))
    return z.masked_fill(~finite, float("-inf"))


def reducible_scores(exit_loss: torch.Tensor, reference_loss: torch.Tensor) -> torch.Tensor:
    """``z(exit_loss) - z(reference_loss)`` over one gross batch; ``-inf`` where either term is not finite."""
    score = zscore(exit_loss.float()) - zscore(reference_loss.float())
    return score.masked_fill(~torch.isfinite(score), float("-inf"))  # x - (-inf) is +inf, -inf - (-inf) NaN


def reference_model(path: str, device) -> tuple:
    """(model, adapter) of the reference model saved at ``path`` (Hugging Face format, e.g. a run's
    ``final/``), in eval mode on ``device``; loaded once per process and device."""
    key = (os.path.abspath(path), str(device))
    if key not in _REFERENCE_MODELS:
        model = AutoModelForMaskedLM.from_pretrained(path).to(device).eval()
        _REFERENCE_MODELS[key] = (model, detect_adapter(model))
    return _REFERENCE_MODELS[key]


def online_reference_loss(path: str, batch: Mapping[str, torch.Tensor], backend: str = "auto",
                          labels_key: str = "labels") -> torch.Tensor:
    """float32 [B]: the reference model's own per-row masked-LM loss on ``batch`` (its masks)."""
    device = batch[labels_key].device
    _, adapter = reference_model(path, device)
    return early_exit_scores(adapter, batch, adapter.num_layers, "loss", backend, labels_key=labels_key)


def is_online(config: SiftConfig) -> bool:
    """Criterion reducible with a reference model directory (else: a score file of stored losses)."""
    return config.criterion == REDUCIBLE and os.path.isdir(config.reference)


def criterion_scores(config: SiftConfig, exit_scores: torch.Tensor, batch: Mapping[str, torch.Tensor],
                     columns: Mapping[str, torch.Tensor], labels_key: str = "labels") -> torch.Tensor:
    """The selection scores of criteria stored and reducible; ``exit_scores``: the early exit's
    per-row scores under ``config.exit_criterion`` (None for stored)."""
    device = batch[labels_key].device
    if config.criterion == STORED:
        return stored_column(columns, SCORE_COLUMN, device)
    if is_online(config):
        reference = online_reference_loss(config.reference, batch, config.kernel, labels_key)
    else:
        reference = stored_column(columns, REFERENCE_COLUMN, device)
    return reducible_scores(exit_scores, reference)
