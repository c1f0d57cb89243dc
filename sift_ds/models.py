"""BERT size presets (a debug-size ``tiny`` up to ``large``) as HF ``BertConfig``s."""
from __future__ import annotations

from typing import Optional

PRESETS = {
    # name: (layers, hidden, heads, intermediate)
    "tiny": (2, 64, 2, 128),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


def bert_config(preset: str, vocab_size: int, max_position_embeddings: int = 512, dropout: float = 0.1, **overrides):
    """A ``transformers.BertConfig`` for a preset name (see ``PRESETS``) or an HF config path/name."""
    from transformers import BertConfig

    if preset in PRESETS:
        layers, hidden, heads, inter = PRESETS[preset]
        cfg = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            max_position_embeddings=max_position_embeddings,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            hidden_act="gelu",
        )
    else:
        cfg = BertConfig.from_pretrained(preset)
        cfg.vocab_size = vocab_size
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def build_bert(preset: str, vocab_size: int, objective: str = "mlm", max_position_embeddings: int = 512,
               dropout: float = 0.1, attn_implementation: Optional[str] = None, **overrides):
    """``BertForMaskedLM`` ("mlm") or ``BertForPreTraining`` ("mlm+nsp"), randomly initialised."""
    from transformers import BertForMaskedLM, BertForPreTraining

    cfg = bert_config(preset, vocab_size, max_position_embeddings, dropout, **overrides)
    if attn_implementation:
        cfg._attn_implementation = attn_implementation
    if objective == "mlm":
        return BertForMaskedLM(cfg)
    if objective == "mlm+nsp":
        return BertForPreTraining(cfg)
    raise ValueError(f"objective must be 'mlm' or 'mlm+nsp', got {objective!r}")
