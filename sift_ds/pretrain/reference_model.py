"""The online reference model of criterion ``reducible``: a Hugging Face masked LM saved in a
directory (e.g. a run's ``final/``), loaded once per process and device in eval mode, and registered
as the scoring core's reference loader."""
from __future__ import annotations

import os
from typing import Dict, Tuple

from transformers import AutoModelForMaskedLM

from ..adapters import detect_adapter
from ..criteria import register_reference_loader

_REFERENCE_MODELS: Dict[Tuple[str, str], tuple] = {}


def reference_model(path: str, device) -> tuple:
    """(model, adapter) of the reference model saved at ``path``, in eval mode on ``device``."""
    key = (os.path.abspath(path), str(device))
    if key not in _REFERENCE_MODELS:
        model = AutoModelForMaskedLM.from_pretrained(path).to(device).eval()
        _REFERENCE_MODELS[key] = (model, detect_adapter(model))
    return _REFERENCE_MODELS[key]


@register_reference_loader
def reference_adapter(path: str, device):
    """The reference model's adapter (the scoring core's reference loader)."""
    return reference_model(path, device)[1]
