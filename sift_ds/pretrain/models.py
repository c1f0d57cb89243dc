"""The pretraining job's models: BERT size presets (a debug-size ``tiny`` up to ``large``) as HF
``BertConfig``s, a tiny preset per supported family (``tiny_roberta``, ``tiny_modernbert``, ...), any
HF masked-LM config file or directory, and BERT models whose training forward runs the MLM head on
the masked positions only. Causal LMs (objective "clm"): a debug-size Llama (``tiny_llama``) and any
HF causal-LM config whose family has a built-in early-exit adapter (Llama, Qwen2/3, Mistral, GPT-2,
GPT-NeoX)."""
from __future__ import annotations

import inspect
import json
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, BertForMaskedLM, BertForPreTraining
from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.bert.modeling_bert import BertForPreTrainingOutput

from ..families import MODEL_TYPE_TO_ADAPTER, CausalAdapter
from ..kernels import IGNORE_INDEX

PRESETS = {
    # name: (layers, hidden, heads, intermediate)
    "tiny": (2, 64, 2, 128),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
FAMILY_PRESETS = {
    # name: (model_type, config fields); debug-size models of each family with a built-in adapter
    "tiny_roberta": ("roberta", dict(_TINY, type_vocab_size=1, max_position_embeddings=514)),
    "tiny_xlm_roberta": ("xlm-roberta", dict(_TINY, type_vocab_size=1, max_position_embeddings=514)),
    "tiny_electra": ("electra", dict(_TINY, embedding_size=32, max_position_embeddings=512)),
    "tiny_distilbert": ("distilbert", dict(dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_position_embeddings=512)),
    "tiny_modernbert": ("modernbert", dict(_TINY, local_attention=16, global_attn_every_n_layers=2,
                                           max_position_embeddings=512)),
    "tiny_deberta_v2": ("deberta-v2", dict(_TINY, relative_attention=True, position_buckets=32, norm_rel_ebd="layer_norm",
                                           pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
                                           conv_kernel_size=3, max_position_embeddings=512)),
}

CAUSAL_PRESETS = {
    # name: (model_type, config fields); debug-size causal LMs (objective "clm")
    "tiny_llama": ("llama", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=176, max_position_embeddings=1024, tie_word_embeddings=False)),
}


def is_causal(model_type: Optional[str]) -> bool:
    """Whether ``model_type`` is a causal LM with a built-in early-exit adapter (objective "clm")."""
    adapter = MODEL_TYPE_TO_ADAPTER.get(model_type)
    return isinstance(adapter, type) and issubclass(adapter, CausalAdapter)


def model_config(name: str, vocab_size: int, flag: str = "--model") -> PretrainedConfig:
    """The config for ``--model``: a BERT preset, a family or causal preset, or an HF config (a
    ``config.json`` file or a directory holding one) of a masked-LM or causal-LM model type that has a
    built-in early-exit adapter. ValueError (one line, naming ``flag`` and the path) for anything else."""
    if name in PRESETS:
        return bert_config(name, vocab_size)
    if name in FAMILY_PRESETS or name in CAUSAL_PRESETS:
        model_type, fields = FAMILY_PRESETS.get(name) or CAUSAL_PRESETS[name]
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
    if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not is_causal(model_type):
        raise ValueError(f"{where}: model_type {model_type!r} is not a masked-LM model (AutoModelForMaskedLM has no "
                         "class for it)")
    if model_type not in MODEL_TYPE_TO_ADAPTER:
        raise ValueError(f"{where}: model_type {model_type!r} has no built-in early-exit adapter (built in: "
                         f"{', '.join(MODEL_TYPE_TO_ADAPTER)})")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{where}: cannot read the config ({' '.join(str(err).split())})") from None


def max_sequence_length(config: PretrainedConfig) -> int:
    """The longest input the config's position embeddings cover: RoBERTa-style positions start after
    the padding id (``pad_token_id + 1``), the others at 0."""
    offset = (config.pad_token_id or 0) + 1 if config.model_type in ("roberta", "xlm-roberta") else 0
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
    """A ``transformers.BertConfig`` for a preset name (see ``PRESETS``) or an HF config path/name."""
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


def sparse_mlm_loss(predictions, sequence_output: torch.Tensor, labels: torch.Tensor):
    """(mean MLM cross-entropy, logits of the labelled rows) with the vocab head applied to the
    labelled positions only (~15% of tokens), as MosaicBERT and academic-budget-bert do. The loss
    equals HF's dense one; the head's FLOPs and the [B, S, V] logits are not spent on the rest.
    (Finding the positions is one host sync on a GPU.)"""
    flat_labels = labels.reshape(-1)
    positions = torch.nonzero(flat_labels != IGNORE_INDEX, as_tuple=False).squeeze(1)
    rows = sequence_output.reshape(-1, sequence_output.shape[-1]).index_select(0, positions)
    logits = predictions(rows)
    return F.cross_entropy(_upcast(logits), flat_labels.index_select(0, positions)), logits


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32 for the softmax; fp32/fp64 as they are."""
    return t.float() if t.element_size() < 4 else t


def _encoder_kwargs(input_ids, attention_mask, token_type_ids, position_ids, kwargs):
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                position_ids=position_ids, **kwargs)


class SparseBertForMaskedLM(BertForMaskedLM):
    """``BertForMaskedLM`` whose forward with ``labels`` runs the head on labelled positions only
    (``logits`` are then [N_labelled, V]); without labels it is exactly the HF forward. Same
    weights and state dict: the export loads as ``BertForMaskedLM``."""

    hf_architecture = "BertForMaskedLM"  # what the exported config.json names (job.export_model)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, **kwargs):
        encoder = _encoder_kwargs(input_ids, attention_mask, token_type_ids, position_ids, kwargs)
        if labels is None:
            return super().forward(**encoder)
        sequence_output = self.bert(**encoder).last_hidden_state
        loss, logits = sparse_mlm_loss(self.cls.predictions, sequence_output, labels)
        return MaskedLMOutput(loss=loss, logits=logits)


class SparseBertForPreTraining(BertForPreTraining):
    """``BertForPreTraining`` (MLM + NSP, loss = mean MLM CE + mean NSP CE as in HF) with the MLM
    head on labelled positions only when both label tensors are given."""

    hf_architecture = "BertForPreTraining"

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, next_sentence_label=None, **kwargs):
        encoder = _encoder_kwargs(input_ids, attention_mask, token_type_ids, position_ids, kwargs)
        if labels is None or next_sentence_label is None:
            return super().forward(labels=labels, next_sentence_label=next_sentence_label, **encoder)
        out = self.bert(**encoder)
        mlm_loss, logits = sparse_mlm_loss(self.cls.predictions, out.last_hidden_state, labels)
        nsp_logits = self.cls.seq_relationship(out.pooler_output)
        loss = mlm_loss + F.cross_entropy(_upcast(nsp_logits), next_sentence_label.reshape(-1))
        return BertForPreTrainingOutput(loss=loss, prediction_logits=logits, seq_relationship_logits=nsp_logits)


def build_bert(preset: str, vocab_size: int, objective: str = "mlm", max_position_embeddings: int = 512,
               dropout: float = 0.1, attn_implementation: Optional[str] = None, sparse_head: bool = False,
               **overrides):
    """``BertForMaskedLM`` ("mlm") or ``BertForPreTraining`` ("mlm+nsp") of a BERT preset, randomly
    initialised; ``sparse_head`` picks the subclasses whose training forward scores masked positions only."""
    cfg = bert_config(preset, vocab_size, max_position_embeddings, dropout, **overrides)
    return build_model(cfg, objective, attn_implementation, sparse_head)


def build_model(config: PretrainedConfig, objective: str = "mlm", attn_implementation: Optional[str] = None,
                sparse_head: bool = False) -> nn.Module:
    """A randomly initialised masked LM for ``config``: BERT as ``build_bert`` describes, any other
    family as its ``AutoModelForMaskedLM`` class (objective "mlm"; the dense HF head); for objective
    "clm", the config's ``AutoModelForCausalLM`` class (its own next-token loss)."""
    if attn_implementation:
        config._attn_implementation = attn_implementation
    if objective == "clm":
        if not is_causal(config.model_type):
            raise ValueError(f"objective 'clm' needs a causal LM, got model_type {config.model_type!r}")
        return AutoModelForCausalLM.from_config(config)
    if objective not in ("mlm", "mlm+nsp"):
        raise ValueError(f"objective must be 'mlm', 'mlm+nsp' or 'clm', got {objective!r}")
    if config.model_type != "bert":
        if objective != "mlm":
            raise ValueError(f"objective 'mlm+nsp' needs a BERT model, got model_type {config.model_type!r}")
        return AutoModelForMaskedLM.from_config(config)
    sparse_mlm, sparse_pretraining = (SparseBertForMaskedLM, SparseBertForPreTraining) if sparse_head else (
        BertForMaskedLM, BertForPreTraining)
    return sparse_mlm(config) if objective == "mlm" else sparse_pretraining(config)
