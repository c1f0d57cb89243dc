"""``sift_ds.initialize``: ``deepspeed.initialize`` plus the "sift" section, validated up front."""
from __future__ import annotations

from typing import Any, Optional

from .adapters import EarlyExitAdapter, detect_adapter
from .config import load_ds_config, split_ds_config
from .engine import SiftEngine


def _micro_batch_from_config(ds_config: dict, world_size: int) -> Optional[int]:
    """train_micro_batch_size_per_gpu as DeepSpeed will resolve it, when the config fixes it."""
    micro = ds_config.get("train_micro_batch_size_per_gpu")
    if micro is not None:
        return int(micro)
    total, gas = ds_config.get("train_batch_size"), ds_config.get("gradient_accumulation_steps", 1)
    if total is not None and total % (int(gas) * world_size) == 0:
        return total // (int(gas) * world_size)
    return None


def initialize(
    args: Any = None,
    model=None,
    model_parameters=None,
    training_data=None,
    config=None,
    adapter: Optional[EarlyExitAdapter] = None,
    collate_fn=None,
    **kwargs: Any,
):
    """Same call and 4-tuple as ``deepspeed.initialize``; ``config`` (a path or dict) may hold a
    ``"sift"`` section. Returns ``(SiftEngine, optimizer, dataloader, lr_scheduler)``; the dataloader,
    when ``training_data`` is given, yields gross batches (micro-batch / keep_ratio rows per rank).

    Bad "sift" values, an exit_layer above the model's depth or a fractional gross batch raise a
    ValueError naming the key before DeepSpeed starts.
    """
    import deepspeed

    if model is None:
        raise ValueError("sift_ds.initialize needs model=")
    if config is None:
        path = getattr(args, "deepspeed_config", None) or getattr(args, "ds_config", None)
        if path is None:
            raise ValueError("no DeepSpeed config: pass config= (path or dict) or args.deepspeed_config")
        config = path
    sift_config, ds_config = split_ds_config(load_ds_config(config))
    adapter = adapter if adapter is not None else detect_adapter(model)
    sift_config.validate_for_model(adapter.num_layers)

    # Check the gross batch before paying for DeepSpeed's start-up when the config fixes the micro-batch.
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else int(__import__("os").environ.get("WORLD_SIZE", "1"))
    micro = _micro_batch_from_config(ds_config, world)
    if micro is not None:
        sift_config.gross_batch_size(micro)

    if args is not None and getattr(args, "deepspeed_config", None) is not None:
        # DeepSpeed refuses a config given both ways; ours (without "sift") goes through config=.
        args = _without_config_path(args)
    engine, optimizer, _, lr_scheduler = deepspeed.initialize(
        args=args, model=model, model_parameters=model_parameters, config=ds_config, **kwargs
    )
    sift_engine = SiftEngine(engine, adapter, sift_config)
    dataloader = None
    if training_data is not None:
        dataloader = engine.deepspeed_io(
            training_data, batch_size=sift_engine.gross_batch_size, collate_fn=collate_fn
        )
    return sift_engine, optimizer, dataloader, lr_scheduler


def _without_config_path(args):
    import copy

    args = copy.copy(args)
    args.deepspeed_config = None
    if hasattr(args, "deepspeed"):
        args.deepspeed = False
    return args
