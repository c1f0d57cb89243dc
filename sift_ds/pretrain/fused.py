"""NVIDIA apex's fused kernels (FusedLayerNorm here, FusedAdam in ``optimizer``) when apex imports on a
CUDA machine, else torch / DeepSpeed.

Never ``pip install apex``: the PyPI package of that name is unrelated. apex is built from source:
``git clone https://github.com/NVIDIA/apex && cd apex && APEX_CPP_EXT=1 APEX_CUDA_EXT=1 pip install -v
--no-build-isolation .``. When it is absent, DeepSpeed's own optimizer (its FusedAdam on CUDA) and
``torch.nn.LayerNorm`` are used, and the log says so.
"""
from __future__ import annotations

import importlib
from typing import Tuple

from deepspeed.accelerator import get_accelerator
from torch import nn


def apex_module(module: str, name: str):
    """``apex.<module>.<name>`` on a CUDA accelerator, else None (apex, optional and CUDA-only, is
    imported only here, by name)."""
    if get_accelerator().device_name() != "cuda":
        return None
    try:
        return getattr(importlib.import_module(f"apex.{module}"), name)
    except (ImportError, AttributeError, OSError):
        return None


def fuse_layer_norms(model: nn.Module) -> Tuple[int, str]:
    """Replace every ``nn.LayerNorm`` by apex's ``FusedLayerNorm`` (weights copied); returns
    (count replaced, the class used)."""
    if not any(type(m) is nn.LayerNorm for m in model.modules()):  # RMSNorm models (Llama, Qwen, ...)
        norms = sorted({type(m).__name__ for m in model.modules() if "norm" in type(m).__name__.lower()})
        return 0, f"the model's own ({', '.join(norms) or 'none'})"
    fused_cls = apex_module("normalization", "FusedLayerNorm")
    if fused_cls is None:
        return 0, "torch.nn.LayerNorm (apex.normalization not available)"
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm and child.bias is not None:  # (ModernBERT's have no bias)
                fused = fused_cls(child.normalized_shape, eps=child.eps, elementwise_affine=child.elementwise_affine)
                fused.load_state_dict(child.state_dict())
                setattr(parent, name, fused.to(next(child.parameters()).device))
                count += 1
    return count, "apex.normalization.FusedLayerNorm"
