"""Early-exit adapter for HF ModernBERT (pre-LN): the global and sliding-window masks and the rotary
embeddings come from the model's own mask functions and ``rotary_emb``; the exit applies the
model's ``final_norm`` before its MLM head, as the full model does after its last layer."""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask

from ..registry import ENCODER, register_family
from .encoders import TINY_SIZES, require


@register_family(ENCODER, model_types=("modernbert",), presets={
    "tiny_modernbert": ("modernbert", dict(TINY_SIZES, local_attention=16, global_attn_every_n_layers=2,
                                           max_position_embeddings=512)),
})
class ModernBertAdapter:
    family = "ModernBERT"

    def __init__(self, model: nn.Module):
        require(model, self.family, "model.final_norm", "head", "decoder")
        self.model, self.base = model, model.model
        self.layers = self.base.layers
        self.num_layers = len(self.layers)
        self.head_modules = [self.base.final_norm, model.head, model.decoder]
        self.output_head = model.head  # the base model's output is already final-normed

    def embed(self, batch):
        input_ids = batch["input_ids"]
        hidden = self.base.embeddings(input_ids=input_ids)
        position_ids = batch.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        kwargs = dict(config=self.base.config, inputs_embeds=hidden, attention_mask=batch.get("attention_mask"))
        masks = {"full_attention": create_bidirectional_mask(**kwargs),
                 "sliding_attention": create_bidirectional_sliding_window_mask(**kwargs)}
        rotary = {kind: self.base.rotary_emb(hidden, position_ids, kind) for kind in set(self.base.config.layer_types)}
        return hidden, (masks, rotary)

    def layer(self, index: int, hidden: torch.Tensor, ctx) -> torch.Tensor:
        masks, rotary = ctx
        layer = self.layers[index]
        return layer(hidden, attention_mask=masks[layer.attention_type], position_embeddings=rotary[layer.attention_type])

    def head_transform(self, rows: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.base.final_norm(rows))

    def vocab_projection(self):
        return self.model.decoder.weight, self.model.decoder.bias

    def selection_modules(self, exit_layer: int) -> List[nn.Module]:
        return [self.base.embeddings, self.base.rotary_emb, *self.layers[:exit_layer], *self.head_modules]
