"""The masked-positions-only MLM head (``sift_ds.mlm_head``) for megatron-core's ``BertModel``.

In training, with ``lm_labels`` given, the model's ``lm_head`` (dense, GeLU, layer norm), its
vocab-parallel output layer and its own ``compute_language_model_loss`` (the vocab-parallel
cross-entropy) run on the labelled positions only: those whose label is a token id (Megatron marks
the others -1, where ``loss_mask`` is 0). The returned per-token loss is ``[b, s]`` as the dense
model's, with the same values at the labelled positions and 0 elsewhere, so a script's ``loss_func``
(the per-token loss times ``loss_mask``) gives the dense loss and gradients. Evaluation and a forward
without labels are the dense ones, and so is training under sequence parallelism (each tensor-parallel
rank then holds a slice of the sequence, with a different number of labelled positions).

``Sift(config).forward_step(...)`` applies it to the model it is given (``Sift(..., sparse_mlm_head=False)``
keeps the dense head); ``apply_sparse_mlm_head(model)`` applies it directly.
"""
from __future__ import annotations

import torch
from megatron.core.models.bert.bert_model import BertModel
from torch import nn

from ..mlm_head import gathering_rows, install_forward, labelled_row_indices
from .adapter import unwrap_model

UNLABELLED = -1  # Megatron's label of a position without a target


def apply_sparse_mlm_head(model: nn.Module) -> nn.Module:
    """The masked-positions-only head for the ``BertModel`` inside ``model`` (any ``.module`` wrappers:
    DDP, Float16Module, a DeepSpeed engine), in place; ``model`` is returned. Other models are left as
    they are. Idempotent."""
    inner = unwrap_model(model)
    if isinstance(inner, BertModel):
        install_forward(inner, _sparse, labels_name="lm_labels")
    return model


def _sparse(model: BertModel, labels: torch.Tensor, run):
    if model.config.sequence_parallel or not model.post_process or model.return_embeddings:
        return run(labels)
    by_position = labels.t()  # the hidden states are sequence-major, [s, b, h]
    positions = labelled_row_indices(labels, UNLABELLED, sequence_major=True)
    rows = by_position.reshape(-1).index_select(0, positions).view(1, -1)  # [b=1, s=N]: N positions, one row
    with gathering_rows(model.lm_head, positions, by_position.shape, keyword="hidden_states", sequence_major=True):
        loss, binary_logits = run(rows)
    dense = loss.new_zeros(labels.numel()).index_copy(0, positions.to(loss.device), loss.reshape(-1))
    return dense.view(by_position.shape).t().contiguous(), binary_logits
