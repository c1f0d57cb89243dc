"""A model family registered from outside the package, in one module: CamemBERT (RoBERTa's layout:
``model.roberta`` and ``model.lm_head``; positions after the padding id). tests/test_registry.py
imports it and runs a selection on a model built from its preset."""
from sift_ds.families import RobertaAdapter
from sift_ds.registry import ENCODER, register_family

TINY_CAMEMBERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                      type_vocab_size=1, max_position_embeddings=66)


@register_family(ENCODER, model_types=("camembert",), positions_after_padding=True,
                 presets={"tiny_camembert": ("camembert", TINY_CAMEMBERT)})
class CamembertAdapter(RobertaAdapter):
    """HF ``CamembertForMaskedLM``: RoBERTa's embeddings, layers and ``lm_head``."""

    family = "CamemBERT"
