"""The pretraining job's models: BERT size presets (a debug-size ``tiny`` up to ``large``, the BERT
family's presets in ``sift_ds.registry``) as HF ``BertConfig``s, a tiny preset per supported family
(``tiny_roberta``, ``tiny_modernbert``, ...), any HF masked-LM config file or directory, with the masked-positions-only MLM head in training
(``sift_ds.mlm_head``) unless asked for the dense one. Causal LMs (objective "clm"): a debug-size
Llama (``tiny_llama``) and any HF causal-LM config whose family has a built-in early-exit adapter
(Llama, Qwen2/3, Mistral, GPT-2, GPT-NeoX)."""
from __future__ import annotations

import inspect
import json
import os
from typing import Optional

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, BertForMaskedLM, BertForPreTraining
from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from .. import registry
from ..mlm_head import apply_sparse_mlm_head

def bert_presets() -> dict:
    """BERT's size presets (name -> ``("bert", config fields)``): the BERT family's in the registry."""
    return dict(registry.by_model_type("bert").presets)


def family_presets() -> dict:
    """The debug-size presets of every other registered masked-LM family (``sift_ds.registry``)."""
    bert = bert_presets()
    return {name: spec for name, spec in registry.presets(registry.ENCODER).items() if name not in bert}


def causal_presets() -> dict:
    """The debug-size presets of every registered causal-LM family (objective "clm")."""
    return registry.presets(registry.CAUSAL)


def model_config(name: str, vocab_size: int, flag: str = "--model") -> PretrainedConfig:
    """The config for ``--model``: a BERT preset, a family or causal preset, or an HF config (a
    ``config.json`` file or a directory holding one) of a masked-LM or causal-LM model type that has a
    built-in early-exit adapter. ValueError (one line, naming ``flag`` and the path) for anything else."""
    if name in bert_presets():
        return bert_config(name, vocab_size)
    if registry.preset(name) is not None:
        model_type, fields = registry.preset(name)
        return AutoConfig.for_model(model_type, vocab_size=vocab_size, pad_token_id=0, **fields)
    config = read_config(name, flag)
    config.vocab_size = vocab_size
    return config


def read_config(path: str, flag: str = "--model") -> PretrainedConfig:
    """An HF masked-LM config from a JSON file or a directory with ``config.json`` (no remote code)."""
    where = f"{flag} {path}"
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ValueError(f"{where}: no config.json in that directory (an HF model config is expected)")
    try:
        with open(file, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{where}: cannot read the config ({err})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: the config must be a JSON object, got a JSON {type(spec).__name__}")
    model_type = spec.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ValueError(f"{where}: the config names {'no' if model_type is None else 'an unknown'} model_type "
                         f"({model_type!r}); an HF config.json names one, e.g. \"model_type\": \"bert\"")
    if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not registry.is_causal(model_type):
        raise ValueError(f"{where}: model_type {model_type!r} is not a masked-LM model (AutoModelForMaskedLM has no "
                         "class for it)")
    if registry.by_model_type(model_type) is None:
        raise ValueError(f"{where}: model_type {model_type!r} has no built-in early-exit adapter (built in: "
                         f"{', '.join(registry.model_types())})")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{where}: cannot read the config ({' '.join(str(err).split())})") from None


def max_sequence_length(config: PretrainedConfig) -> int:
    """The longest input the config's position embeddings cover: in a family whose positions start after
    the padding id (RoBERTa's convention, ``positions_after_padding``) they start at ``pad_token_id + 1``,
    in the others at 0."""
    family = registry.by_model_type(config.model_type)
    offset = (config.pad_token_id or 0) + 1 if family is not None and family.positions_after_padding else 0
    return config.max_position_embeddings - offset


def set_special_tokens(config: PretrainedConfig, tokenizer) -> None:
    """The tokenizer's special-token ids into the config: padding always; [CLS] / [SEP] and BOS / EOS
    where the config has them (a BERT-style tokenizer's BOS / EOS are its [CLS] / [SEP], as in ModernBERT)."""
    ids = {"pad": tokenizer.pad_token_id, "cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id}
    ids["bos"] = getattr(tokenizer, "bos_token_id", None) if getattr(tokenizer, "bos_token_id", None) is not None \
        else ids["cls"]
    ids["eos"] = getattr(tokenizer, "eos_token_id", None) if getattr(tokenizer, "eos_token_id", None) is not None \
        else ids["sep"]
    for kind, value in ids.items():
        name = f"{kind}_token_id"
        if value is not None and (kind == "pad" or getattr(config, name, None) is not None):
            setattr(config, name, value)


def takes_token_types(model: nn.Module) -> bool:
    """Whether the model's forward takes ``token_type_ids`` (DistilBERT and ModernBERT do not)."""
    return "token_type_ids" in inspect.signature(model.forward).parameters


def bert_config(preset: str, vocab_size: int, max_position_embeddings: int = 512, dropout: float = 0.1, **overrides):
    """A ``transformers.BertConfig`` for a preset name (``bert_presets``) or an HF config path/name."""
    presets = bert_presets()
    if preset in presets:
        cfg = BertConfig(
            vocab_size=vocab_size,
            **presets[preset][1],
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
               dropout: float = 0.1, attn_implementation: Optional[str] = None, sparse_head: bool = False,
               masked_share: Optional[float] = None, **overrides):
    """``BertForMaskedLM`` ("mlm") or ``BertForPreTraining`` ("mlm+nsp") of a BERT preset, randomly
    initialised; ``sparse_head``: with the masked-positions-only MLM head in training, padded for
    ``masked_share`` when given (``build_model``)."""
    cfg = bert_config(preset, vocab_size, max_position_embeddings, dropout, **overrides)
    return build_model(cfg, objective, attn_implementation, sparse_head, masked_share)


def build_model(config: PretrainedConfig, objective: str = "mlm", attn_implementation: Optional[str] = None,
                sparse_head: bool = False, masked_share: Optional[float] = None) -> nn.Module:
    """A randomly initialised masked LM for ``config``: ``BertForMaskedLM`` ("mlm") or
    ``BertForPreTraining`` ("mlm+nsp") for BERT, any other family's ``AutoModelForMaskedLM`` class
    (objective "mlm"); with ``sparse_head``, its training forward runs the MLM head on the labelled
    positions only (``sift_ds.mlm_head``: the same loss and gradients). For objective "clm", the
    config's ``AutoModelForCausalLM`` class (its own next-token loss). ``masked_share``: the sparse head
    padded for that masking probability (static shapes for ``torch.compile``)."""
    if attn_implementation:
        config._attn_implementation = attn_implementation
    if objective == "clm":
        if not registry.is_causal(config.model_type):
            raise ValueError(f"objective 'clm' needs a causal LM, got model_type {config.model_type!r}")
        return AutoModelForCausalLM.from_config(config)
    if objective not in ("mlm", "mlm+nsp"):
        raise ValueError(f"objective must be 'mlm', 'mlm+nsp' or 'clm', got {objective!r}")
    if config.model_type != "bert":
        if objective != "mlm":
            raise ValueError(f"objective 'mlm+nsp' needs a BERT model, got model_type {config.model_type!r}")
        model = AutoModelForMaskedLM.from_config(config)
    else:
        model = BertForMaskedLM(config) if objective == "mlm" else BertForPreTraining(config)
    return apply_sparse_mlm_head(model, masked_share) if sparse_head else model
