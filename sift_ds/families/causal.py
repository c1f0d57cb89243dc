"""Early-exit adapters for HF causal LMs: Llama, Qwen2 / Qwen3, Mistral (``model.model`` + rotary
embeddings), GPT-2 (``transformer``) and GPT-NeoX / Pythia (``gpt_neox``). The exit at layer k is the
model's final norm, then its LM head (tied or untied), on layer k's output; position i is scored
against ``labels[:, i + 1]`` (HF's unshifted labels, -100 ignored: ``align_labels``). The causal and
sliding-window masks and the rotary embeddings come from the model's own code."""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from ..registry import CAUSAL, register_family
from .encoders import require

IGNORE_INDEX = -100
MASKS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Position i's target is ``labels[:, i + 1]``; the last position predicts nothing."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)


class CausalAdapter:
    """The shared steps; a family names its embeddings, layers, final norm, LM head and rotary module."""

    family = "causal LM"

    def __init__(self, model: nn.Module, base: nn.Module, layers: nn.ModuleList, embedding_modules: List[nn.Module],
                 norm: nn.Module, lm_head: nn.Module, rotary: nn.Module = None):
        self.model, self.base, self.layers, self.norm, self.lm_head, self.rotary = (
            model, base, layers, norm, lm_head, rotary)
        self.embedding_modules = embedding_modules
        self.head_modules = [norm, lm_head]
        self.num_layers = len(layers)
        config = base.config
        kinds = getattr(config, "layer_types", None)
        default = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"  # Mistral
        self.kinds = list(kinds)[: self.num_layers] if kinds else [default] * self.num_layers

    def embeddings(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, batch):
        input_ids = batch["input_ids"]
        position_ids = batch.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        hidden = self.embeddings(input_ids, position_ids)
        masks = {kind: MASKS[kind](config=self.base.config, inputs_embeds=hidden, attention_mask=batch.get(
            "attention_mask"), cache=None, position_ids=position_ids) for kind in set(self.kinds)}
        rotary = self.rotary(hidden, position_ids=position_ids) if self.rotary is not None else None
        return hidden, (masks, position_ids, rotary)

    def layer(self, index: int, hidden: torch.Tensor, ctx) -> torch.Tensor:
        masks, position_ids, rotary = ctx
        kwargs = dict(attention_mask=masks[self.kinds[index]], position_ids=position_ids)
        if rotary is not None:
            kwargs["position_embeddings"] = rotary
        out = self.layers[index](hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def head_transform(self, rows: torch.Tensor) -> torch.Tensor:
        return self.norm(rows)

    def vocab_projection(self):
        return self.lm_head.weight, self.lm_head.bias

    def align_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_labels(labels)

    def selection_modules(self, exit_layer: int) -> List[nn.Module]:
        rotary = [self.rotary] if self.rotary is not None else []
        return [*self.embedding_modules, *rotary, *self.layers[:exit_layer], *self.head_modules]


@register_family(CAUSAL, model_types=("llama", "qwen2", "qwen3", "mistral"), presets={
    "tiny_llama": ("llama", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=176, max_position_embeddings=1024, tie_word_embeddings=False)),
})
class LlamaStyleAdapter(CausalAdapter):
    """``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``, ``MistralForCausalLM``."""

    family = "Llama-style"

    def __init__(self, model: nn.Module):
        require(model, self.family, "model.embed_tokens", "model.norm", "lm_head")
        base = model.model
        super().__init__(model, base, base.layers, [base.embed_tokens], base.norm, model.lm_head, base.rotary_emb)

    def embeddings(self, input_ids, position_ids):
        return self.base.embed_tokens(input_ids)


@register_family(CAUSAL, model_types=("gpt2",))
class GPT2Adapter(CausalAdapter):
    """``GPT2LMHeadModel``: learned positions, ``ln_f``, the tied ``lm_head``."""

    family = "GPT-2"

    def __init__(self, model: nn.Module):
        require(model, self.family, "transformer.wte", "transformer.ln_f", "lm_head")
        base = model.transformer
        super().__init__(model, base, base.h, [base.wte, base.wpe], base.ln_f, model.lm_head)

    def embeddings(self, input_ids, position_ids):
        return self.base.drop(self.base.wte(input_ids) + self.base.wpe(position_ids))

    def layer(self, index, hidden, ctx):
        masks, position_ids, _ = ctx
        out = self.layers[index](hidden, None, masks[self.kinds[index]], position_ids=position_ids)
        return out[0] if isinstance(out, tuple) else out


@register_family(CAUSAL, model_types=("gpt_neox",))
class GPTNeoXAdapter(CausalAdapter):
    """``GPTNeoXForCausalLM`` (Pythia): ``embed_in``, ``final_layer_norm``, the untied output layer."""

    family = "GPT-NeoX"

    def __init__(self, model: nn.Module):
        require(model, self.family, "gpt_neox.embed_in", "gpt_neox.final_layer_norm")
        base = model.gpt_neox
        head = getattr(model, "lm_head", None) or model.embed_out
        super().__init__(model, base, base.layers, [base.embed_in], base.final_layer_norm, head, base.rotary_emb)

    def embeddings(self, input_ids, position_ids):
        return self.base.emb_dropout(self.base.embed_in(input_ids))
