"""NVIDIA apex's FusedAdam / FusedLayerNorm when apex imports on a CUDA machine, else torch / DeepSpeed.

Never ``pip install apex``: the PyPI package of that name is unrelated. apex is built from
https://github.com/NVIDIA/apex (``--cpp_ext --cuda_ext``); when it is absent, DeepSpeed's own
optimizer (its FusedAdam on CUDA) and ``torch.nn.LayerNorm`` are used, and the log says so.
"""
from __future__ import annotations

import importlib
from typing import List, Optional, Tuple

from torch import nn

ADAM_TYPES = ("adam", "adamw")


def _apex(module: str, name: str):
    """``apex.<module>.<name>`` on a CUDA accelerator, else None."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cuda":
        return None
    try:
        return getattr(importlib.import_module(f"apex.{module}"), name)
    except (ImportError, AttributeError, OSError):
        return None


def fuse_layer_norms(model: nn.Module) -> Tuple[int, str]:
    """Replace every ``nn.LayerNorm`` by apex's ``FusedLayerNorm`` (weights copied); returns
    (count replaced, the class used)."""
    fused_cls = _apex("normalization", "FusedLayerNorm")
    if fused_cls is None:
        return 0, "torch.nn.LayerNorm (apex.normalization not available)"
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm:
                fused = fused_cls(child.normalized_shape, eps=child.eps, elementwise_affine=child.elementwise_affine)
                fused.load_state_dict(child.state_dict())
                setattr(parent, name, fused.to(next(child.parameters()).device))
                count += 1
    return count, "apex.normalization.FusedLayerNorm"


def apex_adam(param_groups: List[dict], ds_config: dict) -> Optional[object]:
    """apex's FusedAdam (AdamW mode for "AdamW") built from the ds_config's optimizer section, which
    is then removed so that DeepSpeed takes this client optimizer; None when apex is not available
    or the section is not Adam / AdamW (or ZeRO offloads the optimizer to the CPU)."""
    section = ds_config.get("optimizer") or {}
    kind = str(section.get("type", "")).lower()
    zero = ds_config.get("zero_optimization") or {}
    if kind not in ADAM_TYPES or zero.get("offload_optimizer"):
        return None
    fused_adam = _apex("optimizers", "FusedAdam")
    if fused_adam is None:
        return None
    params = dict(section.get("params") or {})
    params.pop("torch_adam", None)
    adam_w_mode = params.pop("adam_w_mode", kind == "adamw")
    optimizer = fused_adam(param_groups, adam_w_mode=adam_w_mode, **params)
    del ds_config["optimizer"]
    return optimizer


def weight_decay_groups(model: nn.Module) -> List[dict]:
    """BERT's AdamW groups: no weight decay on biases and LayerNorm weights (HF Trainer / BERT)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, nn.LayerNorm) or "LayerNorm" in type(module).__name__
            (no_decay if name == "bias" or is_norm else decay).append(p)
    seen, groups = set(), []
    for params, overrides in ((decay, {}), (no_decay, {"weight_decay": 0.0})):
        unique = [p for p in params if id(p) not in seen and not seen.add(id(p))]
        if unique:
            groups.append(dict(params=unique, **overrides))
    return groups
