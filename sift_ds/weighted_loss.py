"""The masked-LM loss with per-row weights (``Selection.weights``, importance sampling): each masked
token's cross-entropy times its row's weight, normalised as the model normalises its own loss (the
token mean, or Trainer's ``num_items_in_batch``), so that weights of 1 give the model's loss.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .kernels import IGNORE_INDEX

# The key under which SiftTrainer carries a kept batch's row weights to ``compute_loss``.
ROW_WEIGHTS_KEY = "sift_row_weights"


def weighted_mlm_loss(logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor,
                      num_items: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``sum_t w_row(t) CE_t / T`` over the masked tokens t of ``labels`` [B, S] (-100: not masked),
    T their number (or ``num_items``). ``logits``: ``[B, S, V]`` (a dense head) or ``[N, V]``, one row
    per masked token in row-major order (the masked-positions-only head, ``sift_ds.mlm_head``; the
    padded one's rows after the N-th are padding)."""
    if row_weights.shape != labels.shape[:1]:
        raise ValueError(f"expected one weight per row ({labels.shape[0]}), got shape {tuple(row_weights.shape)}")
    masked = labels != IGNORE_INDEX
    if logits.dim() == 3:
        token = F.cross_entropy(logits.float().flatten(0, 1), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                reduction="none").view(labels.shape)  # 0 where not masked
        total = (token * row_weights.to(token.dtype)[:, None]).sum()
    else:
        rows = torch.nonzero(masked, as_tuple=True)[0]  # row of each masked token, row-major
        # the padded head (mlm_head.padded_positions) puts its padding rows after the masked ones
        token = F.cross_entropy(logits[:rows.numel()].float(), labels[masked], reduction="none")
        total = (token * row_weights.to(token.dtype).index_select(0, rows)).sum()
    count = masked.sum() if num_items is None else num_items
    return total / torch.as_tensor(count, device=total.device).clamp_min(1)


def weighted_output_loss(output, batch, row_weights: torch.Tensor, labels_key: str = "labels",
                         num_items: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``weighted_mlm_loss`` of a Hugging Face masked-LM output (``logits``, or BertForPreTraining's
    ``prediction_logits``) on ``batch``; a batch with next-sentence labels is refused (that loss
    would stay unweighted)."""
    if batch.get("next_sentence_label") is not None:
        raise ValueError("sift.criterion='importance' weights the masked-LM loss only: a next-sentence-prediction "
                         "loss is not supported")
    labels = batch[labels_key]
    logits = getattr(output, "prediction_logits", None)
    logits = output.logits if logits is None else logits
    return weighted_mlm_loss(logits, labels, row_weights, num_items)
