"""Early-exit adapter for HF DeBERTa-v2 / v3 (``DebertaV2ForMaskedLM``): relative attention with the
relative positions, relative embeddings and mask from the model's own encoder helpers, and the
encoder's convolution after the first layer where the config has one. Both MLM heads: the legacy
``cls.predictions`` and ``lm_predictions`` (decoder = the word embeddings)."""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from ..registry import ENCODER, register_family
from .encoders import TINY_SIZES, require


@register_family(ENCODER, model_types=("deberta-v2",), presets={
    "tiny_deberta_v2": ("deberta-v2", dict(TINY_SIZES, relative_attention=True, position_buckets=32, norm_rel_ebd="layer_norm",
                                           pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
                                           conv_kernel_size=3, max_position_embeddings=512)),
})
class DebertaV2Adapter:
    family = "DeBERTa-v2"

    def __init__(self, model: nn.Module):
        require(model, self.family, "deberta", "cls.predictions" if model.config.legacy else "lm_predictions.lm_head")
        self.model, self.base = model, model.deberta
        self.encoder = self.base.encoder
        self.layers = self.encoder.layer
        self.num_layers = len(self.layers)
        self.legacy = model.config.legacy
        self.head = model.cls.predictions if self.legacy else model.lm_predictions.lm_head
        self.head_modules = [self.head]
        self.output_head = self.head

    def embed(self, batch):
        input_ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        hidden = self.base.embeddings(input_ids=input_ids, token_type_ids=batch.get("token_type_ids"),
                                      position_ids=batch.get("position_ids"), mask=mask)
        ctx = dict(input_mask=mask, attention_mask=self.encoder.get_attention_mask(mask),
                   relative_pos=self.encoder.get_rel_pos(hidden), rel_embeddings=self.encoder.get_rel_embedding(),
                   embeddings=hidden)
        return hidden, ctx

    def layer(self, index: int, hidden: torch.Tensor, ctx) -> torch.Tensor:
        out = self.layers[index](hidden, ctx["attention_mask"], relative_pos=ctx["relative_pos"],
                                 rel_embeddings=ctx["rel_embeddings"])[0]
        if index == 0 and self.encoder.conv is not None:
            out = self.encoder.conv(ctx["embeddings"], out, ctx["input_mask"])
        return out

    def head_transform(self, rows: torch.Tensor) -> torch.Tensor:
        if self.legacy:
            return self.head.transform(rows)
        return self.head.LayerNorm(self.head.transform_act_fn(self.head.dense(rows)))

    def vocab_projection(self):
        if self.legacy:
            decoder = self.head.decoder
            return decoder.weight, decoder.bias if decoder.bias is not None else self.head.bias
        return self.base.embeddings.word_embeddings.weight, self.head.bias

    def selection_modules(self, exit_layer: int) -> List[nn.Module]:
        shared = [getattr(self.encoder, name, None) for name in ("rel_embeddings", "LayerNorm", "conv")]
        return [self.base.embeddings, *[m for m in shared if m is not None], *self.layers[:exit_layer], self.head]
