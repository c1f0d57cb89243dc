"""The early-exit protocol (``sift_ds.EarlyExitAdapter``) on megatron-core models: what every
megatron-core adapter shares (``MCoreAdapter``: the tensor-parallel vocabulary, the sequence-major
layout, ``loss_mask``), and ``MCoreBertAdapter`` for ``BertModel`` (``MCoreGPTAdapter``, for
``GPTModel``, lives in ``gpt_adapter.py``).

Megatron's layout differs from HF's in three ways that matter here:

* hidden states are ``[s, b, h]`` (``[s/tp, b, h]`` under sequence parallelism);
* the stack is pre-LN, so its ``final_layernorm`` belongs in front of the head (it is what the full
  model applies after its last layer; at an early exit it normalises the residual stream the same way);
* the output weight (tied or not) and its bias, if any, are this tensor-parallel rank's vocabulary
  shard ``[V/tp, H]``, ids ``vocab_start .. vocab_start + V/tp - 1`` of the padded vocabulary.

Megatron batches mark the positions that count with ``loss_mask`` (BERT's other labels are -1, not
HF's -100): the scored positions are where ``loss_mask`` is non-zero. The tensor-parallel vocabulary,
the sequence-major layout and ``loss_mask`` reach the shared scorer (``sift_ds.scorer``) through the
adapter protocol's optional hooks ``vocab_group``, ``vocab_start``, ``rows_at`` and ``labelled_mask``.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.models.bert.bert_model import BertModel
from torch import nn

from ..registry import ENCODER, register_family, unwrap_model


class MCoreAdapter:
    """The parts of a megatron-core adapter that do not depend on the model class: the checks, the
    layer call, and the protocol's tensor-parallel hooks. A subclass registers its family with the
    megatron-core model class it serves (``sift_ds.registry.register_family(..., megatron_model=...)``),
    sets ``input_key`` (the batch key of the token ids) and fills ``layers`` and ``final_layernorm``."""

    input_key = "text"

    def __init__(self, model: nn.Module):
        inner = unwrap_model(model)
        name = type(self).__name__
        family = getattr(self, "registration", None)  # an unregistered subclass takes any module
        model_class = family.megatron_model if family is not None and family.megatron_model else nn.Module
        if not isinstance(inner, model_class):
            raise TypeError(f"{name} needs a megatron.core {model_class.__name__} (optionally inside DDP / "
                            f"Float16Module / a DeepSpeed engine), got {type(inner).__name__}")
        if not (inner.pre_process and inner.post_process):
            raise ValueError(f"{name} needs the whole model on this rank (pre_process and post_process): "
                             "pipeline parallelism is not supported")
        self.model = inner
        self.config = inner.config

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer(self, index: int, hidden: torch.Tensor, ctx: Any) -> torch.Tensor:
        mask, rotary = ctx
        out, _ = self.layers[index](hidden_states=hidden, attention_mask=mask, rotary_pos_emb=rotary)
        return out

    def rotary(self, hidden: torch.Tensor, stack: nn.Module):
        """The model's rotary embeddings for this sequence length (None without RoPE)."""
        model = self.model
        if model.position_embedding_type != "rope" or getattr(model.config, "multi_latent_attention", False):
            return None
        return model.rotary_pos_emb(model.rotary_pos_emb.get_rotary_seq_len(None, stack, hidden, model.config, None))

    # ------------------------------------------------------------------ the protocol's optional hooks
    @property
    def vocab_group(self):
        """The tensor-parallel group the vocabulary is split over (None without model parallelism)."""
        if not parallel_state.model_parallel_is_initialized():
            return None
        return parallel_state.get_tensor_model_parallel_group()

    @property
    def vocab_start(self) -> int:
        """Global id of row 0 of this rank's vocabulary shard."""
        return parallel_state.get_tensor_model_parallel_rank() * self.vocab_projection()[0].shape[0]

    @staticmethod
    def labelled_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The scored positions: Megatron marks them with ``loss_mask``."""
        return batch["loss_mask"]

    def rows_at(self, hidden: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[s, b, h]`` (``[s/tp, b, h]`` with sequence parallelism: gathered over s in
        the tensor-parallel group first) at the flat ``[b*s]`` positions ``flat`` -> ``[N, h]``."""
        if self.config.sequence_parallel and parallel_state.get_tensor_model_parallel_world_size() > 1:
            hidden = gather_sequence(hidden, parallel_state.get_tensor_model_parallel_group())
        return hidden.transpose(0, 1).reshape(-1, hidden.shape[-1]).index_select(0, flat.to(hidden.device))


@register_family(ENCODER, megatron_model=BertModel)
class MCoreBertAdapter(MCoreAdapter):
    """Early exit of a megatron-core ``BertModel`` (any wrapper with ``.module`` around it).

    Batch keys are Megatron BERT's: ``text`` [b, s], ``padding_mask`` [b, s] (1 = token), ``types``
    (used when the model has token-type embeddings), ``labels`` (-1 where not masked) and ``loss_mask``.
    The exit at layer k: ``encoder.final_layernorm``, the MLM head ``lm_head`` (dense, GeLU,
    layernorm), then the output weight (the tied word embeddings, or ``output_layer.weight``) and bias.
    """

    input_key = "text"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.layers = self.model.encoder.layers
        self.final_layernorm = getattr(self.model.encoder, "final_layernorm", None)

    def embed(self, batch: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Any]:
        bert = self.model
        ids = batch["text"]
        types = batch.get("types") if getattr(bert.embedding, "tokentype_embeddings", None) is not None else None
        hidden = bert.embedding(input_ids=ids, position_ids=bert.bert_position_ids(ids), tokentype_ids=types)
        return hidden, (bert.bert_extended_attention_mask(batch["padding_mask"]), self.rotary(hidden, bert.encoder))

    def head_transform(self, rows: torch.Tensor) -> torch.Tensor:
        if self.final_layernorm is not None:
            rows = self.final_layernorm(rows)
        return self.model.lm_head(rows)

    def vocab_projection(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's shard of the output weight [V/tp, H] (the tied word embeddings) and bias [V/tp]."""
        bert = self.model
        weight = bert.shared_embedding_or_output_weight() if bert.share_embeddings_and_output_weights \
            else bert.output_layer.weight
        return weight, bert.output_layer.bias

    def selection_modules(self, exit_layer: int) -> List[nn.Module]:
        bert = self.model
        tail = [m for m in (self.final_layernorm, bert.lm_head, bert.output_layer) if m is not None]
        return [bert.embedding, *self.layers[:exit_layer], *tail]


def gather_sequence(hidden: torch.Tensor, group) -> torch.Tensor:
    """Concatenate the tensor-parallel ranks' sequence chunks ``[s/tp, b, h]`` -> ``[s, b, h]`` (a list
    all-gather, which gloo supports too)."""
    parts = [torch.empty_like(hidden) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, hidden.contiguous(), group=group)
    return torch.cat(parts, dim=0)
