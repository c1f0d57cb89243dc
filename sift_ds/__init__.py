"""sift_ds: SIFT (sample sifting via early exiting, Das et al. ICML 2024) for DeepSpeed pretraining.

    engine, optimizer, dataloader, lr_scheduler = sift_ds.initialize(model=model, config=ds_config)
    loss = engine.train_step(gross_batch)

The library is this package and ``sift_ds.kernels`` (the Triton / torch scorer): one selection core
(``sift_ds.selection``) under three front-ends, ``initialize`` / ``SiftEngine`` (DeepSpeed),
``sift_ds.hf.SiftTrainer`` (transformers' Trainer) and ``sift_ds.megatron``. The BERT pretraining
application is ``sift_ds.pretrain``, the study tooling ``sift_ds.study``. docs/design.md has the
table of every module.
"""
from . import kernels
from .adapters import BertAdapter, EarlyExitAdapter, detect_adapter
from .config import SiftConfig, split_ds_config
from .config_io import load_ds_config
from .engine import SiftEngine
from .initialize import initialize
from .criteria import early_exit_scores
from .selection import Selection

__version__ = "0.1.0"

__all__ = [
    "BertAdapter",
    "EarlyExitAdapter",
    "Selection",
    "SiftConfig",
    "SiftEngine",
    "detect_adapter",
    "early_exit_scores",
    "initialize",
    "kernels",
    "load_ds_config",
    "split_ds_config",
]
