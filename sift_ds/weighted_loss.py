"""The training loss with per-row weights (``Selection.weights``, from a criterion that samples rows:
importance): each token's loss times its row's weight (``apply_row_weights``, the one hook every
front-end calls: the DeepSpeed engine and ``SiftTrainer`` through ``weighted_output_loss``, Megatron
on its per-token loss), normalised as the model normalises its own loss (the token mean, or
Trainer's ``num_items_in_batch``), so that weights of 1 give the model's loss.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .kernels import IGNORE_INDEX

# The key under which SiftTrainer carries a kept batch's row weights to ``compute_loss``.
ROW_WEIGHTS_KEY = "sift_row_weights"


def apply_row_weights(token_losses: torch.Tensor, row_weights: torch.Tensor,
                      rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each token's loss times its row's weight: ``token_losses`` ``[B, S]`` (row-major rows), or flat
    ``[N]`` with ``rows`` [N] the row of each token."""
    weights = row_weights.to(token_losses.dtype)
    if rows is not None:
        return token_losses * weights.index_select(0, rows)
    if token_losses.dim() != 2 or token_losses.shape[0] != weights.shape[0]:
        raise ValueError(f"expected per-token losses [rows={weights.shape[0]}, positions], got shape "
                         f"{tuple(token_losses.shape)}")
    return token_losses * weights[:, None]


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
        total = apply_row_weights(token, row_weights).sum()
    else:
        rows = torch.nonzero(masked, as_tuple=True)[0]  # row of each masked token, row-major
        # the padded head (mlm_head.padded_positions) puts its padding rows after the masked ones
        token = F.cross_entropy(logits[:rows.numel()].float(), labels[masked], reduction="none")
        total = apply_row_weights(token, row_weights, rows).sum()
    count = masked.sum() if num_items is None else num_items
    return total / torch.as_tensor(count, device=total.device).clamp_min(1)


def weighted_output_loss(output, batch, row_weights: torch.Tensor, labels_key: str = "labels",
                         num_items: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``weighted_mlm_loss`` of a Hugging Face masked-LM output (``logits``, or BertForPreTraining's
    ``prediction_logits``) on ``batch``; a batch with next-sentence labels is refused (that loss
    would stay unweighted)."""
    if batch.get("next_sentence_label") is not None:
        raise ValueError("a criterion that weights rows (sift.criterion='importance') weights the masked-LM loss "
                         "only: a next-sentence-prediction "
                         "loss is not supported")
    labels = batch[labels_key]
    logits = getattr(output, "prediction_logits", None)
    logits = output.logits if logits is None else logits
    return weighted_mlm_loss(logits, labels, row_weights, num_items)
