"""``sift_ds.initialize``: ``deepspeed.initialize`` plus the "sift" section, validated up front."""
from __future__ import annotations

import copy
from typing import Any, Optional

import deepspeed
import torch.distributed as dist

from .adapters import EarlyExitAdapter, detect_adapter
from .batching import resolve_batch_sizes, world_size_from_env
from .config import SECTION, SiftConfig, split_ds_config
from .config_io import load_ds_config
from .engine import SiftEngine
from .schedule import ds_config_warmup, resolve_selection_start
from .frontend import start_up_checks
from .shm import release_shm_buffer
from .versions import require


def initialize(
    args: Any = None,
    model=None,
    model_parameters=None,
    training_data=None,
    config=None,
    adapter: Optional[EarlyExitAdapter] = None,
    collate_fn=None,
    sift_config: Optional[SiftConfig] = None,
    **kwargs: Any,
):
    """Same call and 4-tuple as ``deepspeed.initialize``; ``config`` (a path or dict) may hold a
    ``"sift"`` section, or the caller passes an already validated ``sift_config`` (then a "sift"
    section, if present, must say the same). Returns ``(SiftEngine, optimizer, dataloader,
    lr_scheduler)``; the dataloader, when ``training_data`` is given, yields gross batches
    (micro-batch / keep_ratio rows per rank).

    Bad "sift" values, an exit_layer above the model's depth, batch sizes that break DeepSpeed's
    rule, a fractional gross batch, or a selection start at or after the learning-rate peak of the
    config's scheduler (``sift_ds.schedule``; "auto" resolved against its warm-up) raise a ValueError
    naming the key before DeepSpeed starts.
    """
    require(("torch", "deepspeed", "transformers"), "sift_ds.initialize")
    if model is None:
        raise ValueError("sift_ds.initialize needs model=")
    if config is None:
        path = getattr(args, "deepspeed_config", None) or getattr(args, "ds_config", None)
        if path is None:
            raise ValueError("no DeepSpeed config: pass config= (path or dict) or args.deepspeed_config")
        config = path
    ds_config = load_ds_config(config)
    if sift_config is None:
        sift_config, ds_config = split_ds_config(ds_config)
    else:
        section = ds_config.pop(SECTION, None)
        if section is not None and SiftConfig.from_dict(section) != sift_config:
            raise ValueError("the ds_config's 'sift' section disagrees with the sift_config= passed")
    adapter = adapter if adapter is not None else detect_adapter(model)
    # Check the model and batch sizes before paying for DeepSpeed's start-up (the kernel: in SiftEngine).
    world = dist.get_world_size() if dist.is_initialized() else world_size_from_env()
    start_up_checks(sift_config, adapter, micro_batch=resolve_batch_sizes(ds_config, world).micro)
    if kwargs.get("lr_scheduler") is not None and "scheduler" not in ds_config:
        warmup = (None, "the lr_scheduler passed to sift_ds.initialize")
    else:
        warmup = ds_config_warmup(ds_config)
    sift_config = resolve_selection_start(sift_config, *warmup)  # where selection starts: inside the LR warm-up

    if args is not None and getattr(args, "deepspeed_config", None) is not None:
        # DeepSpeed refuses a config given both ways; ours (without "sift") goes through config=.
        args = copy.copy(args)
        args.deepspeed_config = None
        if hasattr(args, "deepspeed"):
            args.deepspeed = False
    engine, optimizer, _, lr_scheduler = deepspeed.initialize(
        args=args, model=model, model_parameters=model_parameters, config=ds_config, **kwargs
    )
    release_shm_buffer()  # DeepSpeed's CPU all-reduce files in /dev/shm (RAM), which it never removes
    sift_engine = SiftEngine(engine, adapter, sift_config)
    dataloader = None
    if training_data is not None:
        dataloader = engine.deepspeed_io(training_data, batch_size=sift_engine.gross_batch_size, collate_fn=collate_fn)
    return sift_engine, optimizer, dataloader, lr_scheduler
