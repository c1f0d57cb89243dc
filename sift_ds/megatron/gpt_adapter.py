"""``MCoreGPTAdapter``: the early exit of a megatron-core ``GPTModel`` (next-token prediction).

The exit at layer k < L is the model's ``decoder.final_layernorm``, then its output layer, applied
to layer k's output: the untied ``output_layer.weight`` shard ``[V/tp, H]``, or the word embeddings
when ``share_embeddings_and_output_weights`` (no bias: megatron-core's GPT output layer has none).
At k = L with ``criterion="loss"`` the per-token scores are the model's own vocab-parallel loss.

Targets follow Megatron's GPT convention, not HF's: Megatron's ``GPTDataset`` and its ``get_batch``
give ``tokens`` and ``labels`` already shifted (``labels[:, i]`` is the token after
``tokens[:, i]``) with a ``loss_mask`` (0 at padding and, with ``--eod-mask-loss``, at
end-of-document tokens). So position i is scored against ``labels[:, i]`` wherever ``loss_mask`` is
non-zero; there is no ``align_labels`` shift here (the HF causal adapters shift HF's unshifted labels).
"""
from __future__ import annotations

from typing import Any, List, Mapping, Tuple

import torch
from megatron.core.models.gpt import GPTModel
from torch import nn

from ..registry import CAUSAL, register_family
from .adapter import MCoreAdapter

POSITION_EMBEDDINGS = ("rope", "learned_absolute", "none")


@register_family(CAUSAL, megatron_model=GPTModel)
class MCoreGPTAdapter(MCoreAdapter):
    """Early exit of a megatron-core ``GPTModel`` (any wrapper with ``.module`` around it).

    Batch keys are Megatron GPT's (``get_batch``): ``tokens`` [b, s], ``labels`` [b, s] (the next
    tokens), ``loss_mask`` [b, s], and optionally ``position_ids`` [b, s] (default ``0 .. s-1``) and
    ``attention_mask`` (``[b, 1, s, s]``, True = masked out, as ``GPTDataset`` makes it; absent or
    None: the attention's own causal mask, as in the full model's forward).
    """

    input_key = "tokens"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        gpt = self.model
        if gpt.position_embedding_type not in POSITION_EMBEDDINGS:
            raise ValueError(f"MCoreGPTAdapter supports position_embedding_type {'/'.join(POSITION_EMBEDDINGS)}, "
                             f"got {gpt.position_embedding_type!r}; pass Sift(config, adapter=...) for others")
        self.layers = gpt.decoder.layers
        self.final_layernorm = gpt.decoder.final_layernorm

    def embed(self, batch: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Any]:
        gpt = self.model
        tokens = batch["tokens"]
        positions = batch.get("position_ids")
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
        hidden = gpt.embedding(input_ids=tokens, position_ids=positions)
        return hidden, (batch.get("attention_mask"), self.rotary(hidden, gpt.decoder))

    def head_transform(self, rows: torch.Tensor) -> torch.Tensor:
        return self.final_layernorm(rows) if self.final_layernorm is not None else rows

    def vocab_projection(self) -> Tuple[torch.Tensor, None]:
        """This rank's shard of the output weight [V/tp, H] (untied, or the tied word embeddings); no bias."""
        gpt = self.model
        weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights \
            else gpt.output_layer.weight
        return weight, None

    def selection_modules(self, exit_layer: int) -> List[nn.Module]:
        gpt = self.model
        tail = [m for m in (self.final_layernorm, gpt.output_layer) if m is not None]
        return [gpt.embedding, *self.layers[:exit_layer], *tail]
