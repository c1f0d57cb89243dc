"""The built-in early-exit adapters (masked LMs and causal LMs), one small module per family group.
Each adapter class registers its family where it is declared (``sift_ds.registry.register_family``:
its HF ``model_type`` keys, encoder or causal, its debug-size presets); importing this package
registers them all. An adapter's constructor checks that the model carries the family's LM head."""
from __future__ import annotations

# In this order, the order in which the families are listed (masked LMs, then causal LMs).
from .encoders import BertAdapter, DistilBertAdapter, ElectraGeneratorAdapter, EncoderAdapter, RobertaAdapter
from .modernbert import ModernBertAdapter
from .deberta import DebertaV2Adapter
from .causal import CausalAdapter, GPT2Adapter, GPTNeoXAdapter, LlamaStyleAdapter

__all__ = ["BertAdapter", "CausalAdapter", "DebertaV2Adapter", "DistilBertAdapter", "ElectraGeneratorAdapter",
           "EncoderAdapter", "GPT2Adapter", "GPTNeoXAdapter", "LlamaStyleAdapter", "ModernBertAdapter",
           "RobertaAdapter"]
