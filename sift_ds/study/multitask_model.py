"""The asynchronous-convergence study's model: one small BERT encoder (``transformers.BertModel``) with a
linear head per task on the mean of the final hidden states over the sequence's tokens (padding left
out), which a small encoder trained from scratch learns faster than a [CLS] head. Its forward
returns ``{"logits": {task: logits}}`` and its ``task_names`` are the tasks, as
``AsyncConvergenceTrainer`` expects."""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn
from transformers import BertConfig, BertModel


def encoder_config(vocab_size: int, layers: int, hidden: int, max_len: int, heads: Optional[int] = None) -> BertConfig:
    """A BERT configuration of ``layers`` x ``hidden`` (heads: hidden / 32 unless given, feed-forward
    4 x hidden), as the L<layers>-H<hidden> family of Turc et al."""
    heads = heads or max(1, hidden // 32)
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden, max_position_embeddings=max_len)


class MultiTaskEncoder(nn.Module):
    """``classes``: task -> number of classes; one head per task, in that order."""

    def __init__(self, config: BertConfig, classes: Mapping[str, int]):
        super().__init__()
        self.task_names = tuple(classes)
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.heads = nn.ModuleDict({t: nn.Linear(config.hidden_size, n) for t, n in classes.items()})

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        return {"logits": {t: head(pooled) for t, head in self.heads.items()}}
