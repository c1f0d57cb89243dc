"""Per-row columns that ride in the gross batch for criteria that read stored scores: the data
loader adds them (``ROW_COLUMNS``); the selection core takes them out of the batch before anything
reaches the model."""
from __future__ import annotations

from typing import Mapping

import torch

SCORE_COLUMN = "sift_score"  # criterion stored: the block's stored score
REFERENCE_COLUMN = "sift_reference_loss"  # criterion reducible, stored reference: the block's reference loss
ROW_COLUMNS = (SCORE_COLUMN, REFERENCE_COLUMN)
REFERENCE_LOSS = "reference_loss"  # the score name of a reference model's stored loss in a score file


def split_row_columns(batch: Mapping[str, torch.Tensor]):
    """(the batch without the stored columns, the stored columns): the model never sees the latter."""
    return ({k: v for k, v in batch.items() if k not in ROW_COLUMNS},
            {k: v for k, v in batch.items() if k in ROW_COLUMNS})


def stored_column(columns: Mapping[str, torch.Tensor], name: str, device) -> torch.Tensor:
    if name not in columns:
        raise ValueError(f"the gross batch has no {name!r} column: the data loader attaches it from the score file "
                         f"(sift.stored.score_file / sift.reducible.reference); a front-end without one must add it "
                         "to each row")
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
