"""``torch.compile`` with SIFT: the selection's prefix forward (embeddings and the first k layers)
and the training forward, with shapes that stay static from step to step.

* ``compile_prefix(adapter)``: the adapter's early exit (``adapters.early_exit_hidden``) runs a
  compiled ``prefix_hidden``. A gross batch has a fixed shape, so it compiles once per exit layer;
  the rows it keeps and the vocabulary part of the score (``sift_ds.kernels``) stay eager.
* The training forward is compiled by the front-end's own path (DeepSpeed's ``engine.compile``,
  Trainer's ``torch_compile``); its masked-positions-only head is the padded one
  (``mlm_head.apply_sparse_mlm_head(model, masked_share)``), whose row count is fixed per batch shape.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch

from .adapters import EarlyExitAdapter, prefix_hidden

DEFAULT_BACKEND = "inductor"


def compile_prefix(adapter: EarlyExitAdapter, backend: str = DEFAULT_BACKEND, mode: Optional[str] = None,
                   **options: Any) -> EarlyExitAdapter:
    """Give ``adapter`` a compiled prefix forward (``prefix_forward``), in place, and return it; again: nothing."""
    if getattr(adapter, "prefix_forward", None) is None:
        adapter.prefix_forward = torch.compile(functools.partial(prefix_hidden, adapter), backend=backend, mode=mode,
                                               **options)
    return adapter


def compile_engine(engine, backend: str = DEFAULT_BACKEND):
    """A ``SiftEngine`` compiled, in place: DeepSpeed's ``engine.compile`` (the module's forward, the
    training forward) and ``compile_prefix`` for its selection; returns it."""
    engine.engine.compile(backend=backend)
    compile_prefix(engine.adapter, backend)
    return engine
