"""Early-exit adapters for the post-LN encoders in BERT's mould: embeddings, then layers that take
``(hidden, mask)`` with the mask HF's own ``create_bidirectional_mask`` prepares, then an MLM head
(a transform and the tied decoder). HF BERT, RoBERTa / XLM-RoBERTa, the ELECTRA generator, DistilBERT."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

import torch
from torch import nn
from transformers.activations import gelu

from ..registry import ENCODER, register_family

try:  # transformers >= 4.56 / 5.x
    from transformers.masking_utils import create_bidirectional_mask
except ImportError:  # pragma: no cover - older transformers
    create_bidirectional_mask = None


# BERT's sizes, the pretraining job's --model presets: a debug-size "tiny" up to BERT-large.
BERT_PRESETS = {name: ("bert", dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                                    intermediate_size=intermediate))
                for name, (layers, hidden, heads, intermediate) in {
                    "tiny": (2, 64, 2, 128), "mini": (4, 256, 4, 1024), "small": (4, 512, 8, 2048),
                    "medium": (8, 512, 8, 2048), "base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}.items()}
TINY_SIZES = BERT_PRESETS["tiny"][1]  # the other families' debug-size presets take BERT's tiny sizes


def require(model: nn.Module, family: str, *paths: str) -> None:
    """TypeError naming the first missing ``a.b`` attribute path (a model without the family's MLM head)."""
    for path in paths:
        obj = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if obj is None:
            raise TypeError(f"the {family} early-exit adapter needs model.{path} (its masked-LM head class), got "
                            f"{type(model).__name__}; pass adapter= for other models")


def bidirectional_mask(base: nn.Module, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]):
    """The attention mask exactly as the base model's forward prepares it for its layers."""
    if create_bidirectional_mask is None:  # older transformers: the classic additive extended mask
        return None if attention_mask is None else base.get_extended_attention_mask(attention_mask, hidden.shape[:2])
    return create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask)


class EncoderAdapter:
    """The shared early-exit steps; a family names its base model, layers, embedding modules and head
    modules (every module of the head, the decoder included, so that ZeRO-3 gathers all of it; the
    first is the one the model's forward calls on its last hidden states)."""

    family = "encoder"

    def __init__(self, model: nn.Module, base: nn.Module, layers: nn.ModuleList, embedding_modules: List[nn.Module],
                 head_modules: List[nn.Module], decoder: nn.Module, bias: Optional[torch.Tensor] = None):
        self.model, self.base, self.layers = model, base, layers
        self.embedding_modules, self.head_modules, self.decoder = embedding_modules, head_modules, decoder
        self.bias = decoder.bias if getattr(decoder, "bias", None) is not None else bias
        self.num_layers = len(layers)
        self.output_head = head_modules[0]  # what the model's forward hands its last hidden states to

    def embeddings(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, batch: Mapping[str, torch.Tensor]):
        hidden = self.embeddings(batch)
        return hidden, bidirectional_mask(self.base, hidden, batch.get("attention_mask"))

    def layer(self, index: int, hidden: torch.Tensor, ctx: Any) -> torch.Tensor:
        out = self.layers[index](hidden, ctx)
        return out[0] if isinstance(out, tuple) else out  # transformers 4.x returns a tuple

    def head_transform(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def vocab_projection(self):
        return self.decoder.weight, self.bias

    def selection_modules(self, exit_layer: int) -> List[nn.Module]:
        return [*self.embedding_modules, *self.layers[:exit_layer], *self.head_modules]


@register_family(ENCODER, model_types=("bert",), presets=BERT_PRESETS)
class BertAdapter(EncoderAdapter):
    """HF ``BertForPreTraining`` / ``BertForMaskedLM`` (``model.bert`` + ``model.cls.predictions``)."""

    family = "BERT"

    def __init__(self, model: nn.Module):
        require(model, self.family, "bert", "cls.predictions")
        self.bert, self.predictions = model.bert, model.cls.predictions
        super().__init__(model, model.bert, model.bert.encoder.layer, [model.bert.embeddings], [self.predictions],
                         self.predictions.decoder, getattr(self.predictions, "bias", None))

    def embeddings(self, batch):
        return self.bert.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"),
                                    position_ids=batch.get("position_ids"))

    def head_transform(self, rows):
        return self.predictions.transform(rows)


@register_family(ENCODER, model_types=("roberta", "xlm-roberta"), positions_after_padding=True, presets={
    "tiny_roberta": ("roberta", dict(TINY_SIZES, type_vocab_size=1, max_position_embeddings=514)),
    "tiny_xlm_roberta": ("xlm-roberta", dict(TINY_SIZES, type_vocab_size=1, max_position_embeddings=514)),
})
class RobertaAdapter(EncoderAdapter):
    """HF ``RobertaForMaskedLM`` and ``XLMRobertaForMaskedLM`` (``lm_head``: dense, gelu, layer norm,
    decoder). Position ids follow the padding as HF makes them (from ``input_ids`` and ``pad_token_id``)."""

    family = "RoBERTa"

    def __init__(self, model: nn.Module):
        require(model, self.family, "roberta", "lm_head")
        base, head = model.roberta, model.lm_head
        super().__init__(model, base, base.encoder.layer, [base.embeddings], [head], head.decoder, head.bias)
        self.lm_head = head

    def embeddings(self, batch):
        return self.base.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"),
                                    position_ids=batch.get("position_ids"))

    def head_transform(self, rows):
        return self.lm_head.layer_norm(gelu(self.lm_head.dense(rows)))


@register_family(ENCODER, model_types=("electra",), presets={
    "tiny_electra": ("electra", dict(TINY_SIZES, embedding_size=32, max_position_embeddings=512)),
})
class ElectraGeneratorAdapter(EncoderAdapter):
    """HF ``ElectraForMaskedLM`` (the generator; the discriminator has no MLM head), with its
    ``embeddings_project`` when the embedding size differs from the hidden size."""

    family = "ELECTRA generator"

    def __init__(self, model: nn.Module):
        require(model, self.family, "electra", "generator_predictions", "generator_lm_head")
        base = model.electra
        project = [base.embeddings_project] if hasattr(base, "embeddings_project") else []
        super().__init__(model, base, base.encoder.layer, [base.embeddings, *project],
                         [model.generator_predictions, model.generator_lm_head], model.generator_lm_head)
        self.project = project

    def embeddings(self, batch):
        hidden = self.base.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"),
                                      position_ids=batch.get("position_ids"))
        return self.project[0](hidden) if self.project else hidden

    def head_transform(self, rows):
        return self.model.generator_predictions(rows)


@register_family(ENCODER, model_types=("distilbert",), presets={
    "tiny_distilbert": ("distilbert", dict(dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_position_embeddings=512)),
})
class DistilBertAdapter(EncoderAdapter):
    """HF ``DistilBertForMaskedLM`` (no token types; head: vocab_transform, activation, layer norm, projector)."""

    family = "DistilBERT"

    def __init__(self, model: nn.Module):
        require(model, self.family, "distilbert", "vocab_transform", "vocab_layer_norm", "vocab_projector")
        base = model.distilbert
        super().__init__(model, base, base.transformer.layer, [base.embeddings],
                         [model.vocab_transform, model.vocab_layer_norm, model.vocab_projector], model.vocab_projector)

    def embeddings(self, batch):
        return self.base.embeddings(batch["input_ids"], None, batch.get("position_ids"))

    def head_transform(self, rows):
        m = self.model
        return m.vocab_layer_norm(m.activation(m.vocab_transform(rows)))
