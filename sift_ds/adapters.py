"""Early-exit adapters: how to run the first k layers of a model and its own MLM head.

An adapter is a small protocol, so that models other than HF BERT can be plugged in:

    class MyAdapter:
        num_layers: int                                   # depth L (exit_layer is 1..L)
        def embed(self, batch) -> (hidden [B,S,H], ctx)   # embeddings + whatever the layers need
        def layer(self, i, hidden, ctx) -> hidden         # encoder layer i (0-based)
        def head_transform(self, rows [N,H]) -> [N,H]     # MLM head up to the vocab projection
        def vocab_projection(self) -> (weight [V,H], bias [V] | None)   # the tied decoder
        def selection_modules(self, exit_layer) -> list[nn.Module]      # modules the pass touches

``selection_modules`` lets the engine gather exactly those parameters under ZeRO-3 and switch
their dropout off. ``BertAdapter`` implements it for ``BertForPreTraining``/``BertForMaskedLM``.

Optional hooks, for tensor-parallel models and other batch layouts (``sift_ds.scorer`` reads them
where an adapter has them; ``sift_ds.megatron.MCoreBertAdapter`` has all four):

        vocab_group                                       # process group the vocab head is split over
        vocab_start: int                                  # global id of row 0 of this rank's shard
        def rows_at(self, hidden, flat) -> [N,H]          # hidden at flat [B*S] positions (default: [B,S,H])
        def labelled_mask(self, batch) -> [B,S]           # scored positions (default: labels != -100)

With a ``vocab_group``, ``vocab_projection`` returns this rank's shard and the scorer merges the
shards' softmax statistics over the group.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import nn

try:  # transformers >= 4.56 / 5.x
    from transformers.masking_utils import create_bidirectional_mask
except ImportError:  # pragma: no cover - older transformers
    create_bidirectional_mask = None


@runtime_checkable
class EarlyExitAdapter(Protocol):
    num_layers: int

    def embed(self, batch: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Any]: ...

    def layer(self, index: int, hidden: torch.Tensor, ctx: Any) -> torch.Tensor: ...

    def head_transform(self, rows: torch.Tensor) -> torch.Tensor: ...

    def vocab_projection(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]: ...

    def selection_modules(self, exit_layer: int) -> List[nn.Module]: ...


def early_exit_hidden(adapter: EarlyExitAdapter, batch: Mapping[str, torch.Tensor], exit_layer: int) -> torch.Tensor:
    """Hidden states [B, S, H] after the first ``exit_layer`` encoder layers."""
    hidden, ctx = adapter.embed(batch)
    for i in range(exit_layer):
        hidden = adapter.layer(i, hidden, ctx)
    return hidden


class BertAdapter:
    """HF ``BertForPreTraining`` / ``BertForMaskedLM`` (``model.bert`` + ``model.cls.predictions``)."""

    def __init__(self, model: nn.Module):
        if not (hasattr(model, "bert") and hasattr(model, "cls") and hasattr(model.cls, "predictions")):
            raise TypeError(
                f"BertAdapter needs a model with .bert and .cls.predictions (BertForPreTraining or "
                f"BertForMaskedLM), got {type(model).__name__}; pass adapter= for other models"
            )
        self.model = model
        self.bert = model.bert
        self.predictions = model.cls.predictions
        self.num_layers = len(self.bert.encoder.layer)

    def embed(self, batch: Mapping[str, torch.Tensor]):
        input_ids = batch["input_ids"]
        hidden = self.bert.embeddings(
            input_ids=input_ids,
            token_type_ids=batch.get("token_type_ids"),
            position_ids=batch.get("position_ids"),
        )
        return hidden, self._attention_mask(batch.get("attention_mask"), hidden)

    def _attention_mask(self, attention_mask: Optional[torch.Tensor], hidden: torch.Tensor):
        """The mask exactly as ``BertModel.forward`` prepares it for its layers."""
        if create_bidirectional_mask is None:  # older transformers: the classic additive extended mask
            if attention_mask is None:
                return None
            return self.bert.get_extended_attention_mask(attention_mask, hidden.shape[:2])
        return create_bidirectional_mask(config=self.bert.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def layer(self, index: int, hidden: torch.Tensor, ctx: Any) -> torch.Tensor:
        out = self.bert.encoder.layer[index](hidden, ctx)
        return out[0] if isinstance(out, tuple) else out  # transformers 4.x returns a tuple

    def head_transform(self, rows: torch.Tensor) -> torch.Tensor:
        return self.predictions.transform(rows)

    def vocab_projection(self):
        decoder = self.predictions.decoder
        bias = decoder.bias if decoder.bias is not None else getattr(self.predictions, "bias", None)
        return decoder.weight, bias

    def selection_modules(self, exit_layer: int) -> List[nn.Module]:
        return [self.bert.embeddings, *self.bert.encoder.layer[:exit_layer], self.predictions]


def detect_adapter(model: nn.Module) -> EarlyExitAdapter:
    """The built-in adapter for ``model``, or a TypeError that says to pass ``adapter=``."""
    if hasattr(model, "bert") and hasattr(getattr(model, "cls", None), "predictions"):
        return BertAdapter(model)
    raise TypeError(
        f"no built-in early-exit adapter for {type(model).__name__}; pass adapter= an object implementing "
        "sift_ds.EarlyExitAdapter (embed, layer, head_transform, vocab_projection, selection_modules, num_layers)"
    )
