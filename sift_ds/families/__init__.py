"""The built-in early-exit adapters (masked LMs and causal LMs), one small module per family group, found by ``config.model_type``
(``sift_ds.adapters.detect_adapter``). ``MODEL_TYPE_TO_ADAPTER`` maps an HF ``model_type`` to the
adapter class; an adapter's constructor checks that the model carries the family's LM head."""
from __future__ import annotations

from typing import Callable, Dict, Optional

from torch import nn

from .causal import CausalAdapter, GPT2Adapter, GPTNeoXAdapter, LlamaStyleAdapter
from .deberta import DebertaV2Adapter
from .encoders import BertAdapter, DistilBertAdapter, ElectraGeneratorAdapter, EncoderAdapter, RobertaAdapter
from .modernbert import ModernBertAdapter

MODEL_TYPE_TO_ADAPTER: Dict[str, Callable[[nn.Module], object]] = {
    "bert": BertAdapter,
    "roberta": RobertaAdapter,
    "xlm-roberta": RobertaAdapter,
    "electra": ElectraGeneratorAdapter,
    "distilbert": DistilBertAdapter,
    "modernbert": ModernBertAdapter,
    "deberta-v2": DebertaV2Adapter,
    # causal LMs (next-token targets: the adapter's align_labels)
    "llama": LlamaStyleAdapter,
    "qwen2": LlamaStyleAdapter,
    "qwen3": LlamaStyleAdapter,
    "mistral": LlamaStyleAdapter,
    "gpt2": GPT2Adapter,
    "gpt_neox": GPTNeoXAdapter,
}


def adapter_class(model: nn.Module) -> Optional[Callable[[nn.Module], object]]:
    """The registered adapter for the model's ``config.model_type`` (None when there is none)."""
    return MODEL_TYPE_TO_ADAPTER.get(getattr(getattr(model, "config", None), "model_type", None))


__all__ = ["MODEL_TYPE_TO_ADAPTER", "BertAdapter", "CausalAdapter", "DebertaV2Adapter", "DistilBertAdapter",
           "ElectraGeneratorAdapter", "EncoderAdapter", "GPT2Adapter", "GPTNeoXAdapter", "LlamaStyleAdapter",
           "ModernBertAdapter", "RobertaAdapter", "adapter_class"]
