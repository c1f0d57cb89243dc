"""sift_ds: SIFT (sample sifting via early exiting, Das et al. ICML 2024) for DeepSpeed pretraining.

    engine, optimizer, dataloader, lr_scheduler = sift_ds.initialize(model=model, config=ds_config)
    loss = engine.train_step(gross_batch)
"""
from . import kernels
from .adapters import BertAdapter, EarlyExitAdapter, detect_adapter
from .config import SiftConfig, load_ds_config, split_ds_config
from .engine import Selection, SiftEngine
from .initialize import initialize
from .scorer import early_exit_scores

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
