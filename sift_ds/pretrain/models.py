"""BERT size presets (a debug-size ``tiny`` up to ``large``) as HF ``BertConfig``s, and BERT models
whose training forward runs the MLM head on the masked positions only."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.bert.modeling_bert import BertForPreTrainingOutput

from ..kernels import IGNORE_INDEX

PRESETS = {
    # name: (layers, hidden, heads, intermediate)
    "tiny": (2, 64, 2, 128),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


def bert_config(preset: str, vocab_size: int, max_position_embeddings: int = 512, dropout: float = 0.1, **overrides):
    """A ``transformers.BertConfig`` for a preset name (see ``PRESETS``) or an HF config path/name."""
    if preset in PRESETS:
        layers, hidden, heads, inter = PRESETS[preset]
        cfg = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            max_position_embeddings=max_position_embeddings,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            hidden_act="gelu",
        )
    else:
        cfg = BertConfig.from_pretrained(preset)
        cfg.vocab_size = vocab_size
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def sparse_mlm_loss(predictions, sequence_output: torch.Tensor, labels: torch.Tensor):
    """(mean MLM cross-entropy, logits of the labelled rows) with the vocab head applied to the
    labelled positions only (~15% of tokens), as MosaicBERT and academic-budget-bert do. The loss
    equals HF's dense one; the head's FLOPs and the [B, S, V] logits are not spent on the rest.
    (Finding the positions is one host sync on a GPU.)"""
    flat_labels = labels.reshape(-1)
    positions = torch.nonzero(flat_labels != IGNORE_INDEX, as_tuple=False).squeeze(1)
    rows = sequence_output.reshape(-1, sequence_output.shape[-1]).index_select(0, positions)
    logits = predictions(rows)
    return F.cross_entropy(_upcast(logits), flat_labels.index_select(0, positions)), logits


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32 for the softmax; fp32/fp64 as they are."""
    return t.float() if t.element_size() < 4 else t


def _encoder_kwargs(input_ids, attention_mask, token_type_ids, position_ids, kwargs):
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                position_ids=position_ids, **kwargs)


class SparseBertForMaskedLM(BertForMaskedLM):
    """``BertForMaskedLM`` whose forward with ``labels`` runs the head on labelled positions only
    (``logits`` are then [N_labelled, V]); without labels it is exactly the HF forward. Same
    weights and state dict: the export loads as ``BertForMaskedLM``."""

    hf_architecture = "BertForMaskedLM"  # what the exported config.json names (job.export_model)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, **kwargs):
        encoder = _encoder_kwargs(input_ids, attention_mask, token_type_ids, position_ids, kwargs)
        if labels is None:
            return super().forward(**encoder)
        sequence_output = self.bert(**encoder).last_hidden_state
        loss, logits = sparse_mlm_loss(self.cls.predictions, sequence_output, labels)
        return MaskedLMOutput(loss=loss, logits=logits)


class SparseBertForPreTraining(BertForPreTraining):
    """``BertForPreTraining`` (MLM + NSP, loss = mean MLM CE + mean NSP CE as in HF) with the MLM
    head on labelled positions only when both label tensors are given."""

    hf_architecture = "BertForPreTraining"

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, next_sentence_label=None, **kwargs):
        encoder = _encoder_kwargs(input_ids, attention_mask, token_type_ids, position_ids, kwargs)
        if labels is None or next_sentence_label is None:
            return super().forward(labels=labels, next_sentence_label=next_sentence_label, **encoder)
        out = self.bert(**encoder)
        mlm_loss, logits = sparse_mlm_loss(self.cls.predictions, out.last_hidden_state, labels)
        nsp_logits = self.cls.seq_relationship(out.pooler_output)
        loss = mlm_loss + F.cross_entropy(_upcast(nsp_logits), next_sentence_label.reshape(-1))
        return BertForPreTrainingOutput(loss=loss, prediction_logits=logits, seq_relationship_logits=nsp_logits)


def build_bert(preset: str, vocab_size: int, objective: str = "mlm", max_position_embeddings: int = 512,
               dropout: float = 0.1, attn_implementation: Optional[str] = None, sparse_head: bool = False,
               **overrides):
    """``BertForMaskedLM`` ("mlm") or ``BertForPreTraining`` ("mlm+nsp"), randomly initialised;
    ``sparse_head`` picks the subclasses whose training forward scores masked positions only."""
    cfg = bert_config(preset, vocab_size, max_position_embeddings, dropout, **overrides)
    if attn_implementation:
        cfg._attn_implementation = attn_implementation
    sparse_mlm, sparse_pretraining = (SparseBertForMaskedLM, SparseBertForPreTraining) if sparse_head else (
        BertForMaskedLM, BertForPreTraining)
    if objective == "mlm":
        return sparse_mlm(cfg)
    if objective == "mlm+nsp":
        return sparse_pretraining(cfg)
    raise ValueError(f"objective must be 'mlm' or 'mlm+nsp', got {objective!r}")


def weight_decay_groups(model: nn.Module) -> List[dict]:
    """BERT's AdamW groups: no weight decay on biases and LayerNorm weights (HF Trainer / BERT)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, nn.LayerNorm) or "LayerNorm" in type(module).__name__
            (no_decay if name == "bias" or is_norm else decay).append(p)
    seen, groups = set(), []
    for params, overrides in ((decay, {}), (no_decay, {"weight_decay": 0.0})):
        unique = [p for p in params if id(p) not in seen and not seen.add(id(p))]
        if unique:
            groups.append(dict(params=unique, **overrides))
    return groups
