"""The optimizer of the pretraining job: BERT's weight-decay groups, and apex's FusedAdam as a client
optimizer when apex is available (otherwise DeepSpeed builds the ds_config's optimizer itself)."""
from __future__ import annotations

from typing import List, Optional, Tuple

from torch import nn

from .ds_policy import ADAM_TYPES, TORCH_ADAM
from .fused import apex_module


def apex_adam(param_groups: List[dict], ds_config: dict) -> Tuple[Optional[object], dict]:
    """(apex FusedAdam built from the ds_config's optimizer section, the ds_config for DeepSpeed
    without that section) when apex is available and the section is Adam / AdamW without CPU
    offload; else (None, ds_config). ``ds_config`` itself is not modified: the run's record keeps
    its optimizer section."""
    section = ds_config.get("optimizer") or {}
    kind = str(section.get("type", "")).lower()
    zero = ds_config.get("zero_optimization") or {}
    if kind not in ADAM_TYPES or zero.get("offload_optimizer"):
        return None, ds_config
    fused_adam = apex_module("optimizers", "FusedAdam")
    if fused_adam is None:
        return None, ds_config
    params = dict(section.get("params") or {})
    params.pop(TORCH_ADAM, None)
    adam_w_mode = params.pop("adam_w_mode", kind == "adamw")
    optimizer = fused_adam(param_groups, adam_w_mode=adam_w_mode, **params)
    return optimizer, {k: v for k, v in ds_config.items() if k != "optimizer"}


def weight_decay_groups(model: nn.Module) -> List[dict]:
    """BERT's AdamW groups: no weight decay on biases and LayerNorm weights (HF Trainer / BERT)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, nn.LayerNorm) or any(k in type(module).__name__ for k in ("LayerNorm", "RMSNorm"))
            (no_decay if name == "bias" or is_norm else decay).append(p)
    seen, groups = set(), []
    for params, overrides in ((decay, {}), (no_decay, {"weight_decay": 0.0})):
        unique = [p for p in params if id(p) not in seen and not seen.add(id(p))]
        if unique:
            groups.append(dict(params=unique, **overrides))
    return groups
