"""Early-exit adapters: how to run the first k layers of a model and its own LM head.

An adapter is a small protocol, so that models other than HF BERT can be plugged in:

    class MyAdapter:
        num_layers: int                                   # depth L (exit_layer is 1..L)
        def embed(self, batch) -> (hidden [B,S,H], ctx)   # embeddings + whatever the layers need
        def layer(self, i, hidden, ctx) -> hidden         # encoder layer i (0-based)
        def head_transform(self, rows [N,H]) -> [N,H]     # MLM head up to the vocab projection
        def vocab_projection(self) -> (weight [V,H], bias [V] | None)   # the tied decoder
        def selection_modules(self, exit_layer) -> list[nn.Module]      # modules the pass touches

Optional: ``align_labels(labels [B,S]) -> [B,S]``, the target of each hidden position, for models
whose position i predicts another label (causal LMs: ``labels[:, i + 1]``, HF's unshifted labels);
without it position i is scored against ``labels[:, i]``.

Optional: ``output_head``, the module that the full model's forward hands its final hidden states
``[B, S, H]`` to (first argument); the masked-positions-only MLM head (``sift_ds.mlm_head``) gathers
the labelled rows there. The built-in masked-LM adapters have it.

``selection_modules`` lets the engine gather exactly those parameters under ZeRO-3 and switch
their dropout off. ``sift_ds.families`` holds the built-in adapters (HF BERT, RoBERTa, XLM-RoBERTa,
ModernBERT, DistilBERT, the ELECTRA generator, DeBERTa-v2; causal: Llama, Qwen2 / Qwen3, Mistral,
GPT-2, GPT-NeoX); each registers its family (``sift_ds.registry``) and is found by ``config.model_type``.

Optional hooks, for tensor-parallel models and other batch layouts (``sift_ds.scorer`` reads them
where an adapter has them; ``sift_ds.megatron.MCoreAdapter``, the base of its BERT and GPT adapters, has all four):

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

from . import registry
from .families import BertAdapter  # registers the built-in families (sift_ds.families needs nothing from here)


@runtime_checkable
class EarlyExitAdapter(Protocol):
    num_layers: int

    def embed(self, batch: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Any]: ...

    def layer(self, index: int, hidden: torch.Tensor, ctx: Any) -> torch.Tensor: ...

    def head_transform(self, rows: torch.Tensor) -> torch.Tensor: ...

    def vocab_projection(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]: ...

    def selection_modules(self, exit_layer: int) -> List[nn.Module]: ...


def early_exit_hidden(adapter: EarlyExitAdapter, batch: Mapping[str, torch.Tensor], exit_layer: int) -> torch.Tensor:
    """Hidden states [B, S, H] after the first ``exit_layer`` encoder layers: the adapter's compiled
    ``prefix_forward`` when it has one (``sift_ds.compiling.compile_prefix``), else ``prefix_hidden``."""
    compiled = getattr(adapter, "prefix_forward", None)
    if compiled is not None:
        return compiled(batch, exit_layer)
    return prefix_hidden(adapter, batch, exit_layer)


def prefix_hidden(adapter: EarlyExitAdapter, batch: Mapping[str, torch.Tensor], exit_layer: int) -> torch.Tensor:
    """The embeddings and the first ``exit_layer`` layers, eagerly."""
    hidden, ctx = adapter.embed(batch)
    for i in range(exit_layer):
        hidden = adapter.layer(i, hidden, ctx)
    return hidden


def aligned_labels(adapter: EarlyExitAdapter, labels: torch.Tensor) -> torch.Tensor:
    """The target of each hidden position: the adapter's ``align_labels``, or ``labels`` as they are."""
    align = getattr(adapter, "align_labels", None)
    return labels if align is None else align(labels)


def detect_adapter(model: nn.Module) -> EarlyExitAdapter:
    """The registered adapter for ``model`` (``sift_ds.registry.resolve``: by its ``config.model_type``,
    or by its megatron-core class), or a TypeError that says to pass ``adapter=``."""
    family = registry.resolve(model)
    if family is not None:
        return family.adapter(model)
    if hasattr(model, "bert") and hasattr(getattr(model, "cls", None), "predictions"):
        return BertAdapter(model)  # a BERT-shaped model whose config names no registered type
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    raise TypeError(
        f"no built-in early-exit adapter for {type(registry.unwrap_model(model)).__name__} (model_type {model_type!r}; "
        f"built in: {registry.served()}); pass adapter= an object implementing sift_ds.EarlyExitAdapter "
        "(embed, layer, head_transform, vocab_projection, selection_modules, num_layers)"
    )
