"""The pretraining job's ds_config policy: the paper's AdamW and learning-rate schedule when the config
leaves them out, "auto" scheduler values filled in from the run length, the precision checks DeepSpeed
would otherwise make only after start-up, and the Adam implementation whose resume is exact on the CPU
(the monitor sections: ``tracking``), and ``--compile`` against the config."""
from __future__ import annotations

import copy
import math
from typing import List, Optional

import torch

from ..config import SiftConfig
from ..schedule import ds_config_warmup, resolve_selection_start

PAPER_ADAMW = {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.01}}
PAPER_WARMUP_FRACTION = 0.002  # the paper warms up over 0.2 % of the steps
SCHEDULERS_WITH_TOTAL = ("WarmupDecayLR", "WarmupCosineLR")
ADAM_TYPES = ("adam", "adamw")
TORCH_ADAM = "torch_adam"  # DeepSpeed's optimizer param: torch.optim.Adam(W) instead of its FusedAdam


def enabled(ds_config: dict, key: str) -> bool:
    section = ds_config.get(key)
    return isinstance(section, dict) and bool(section.get("enabled", False))


def check_precision(ds_config: dict, accelerator: str, check_only: bool = False) -> List[str]:
    """ValueError for a precision this accelerator cannot run; with ``check_only`` (a CPU login node
    checking a GPU config), fp16 on the CPU is not refused but named in the warnings returned."""
    fp16, bf16 = enabled(ds_config, "fp16"), enabled(ds_config, "bf16") or enabled(ds_config, "bfloat16")
    if fp16 and bf16:
        raise ValueError("ds_config enables both fp16 and bf16; choose one")
    if fp16 and accelerator == "cpu":
        if check_only:
            return ["ds_config fp16.enabled: not checked on this node, whose accelerator is the CPU (DeepSpeed runs "
                    "fp16 on CUDA only): the run needs GPUs; everything else was checked"]
        raise ValueError("ds_config fp16.enabled: DeepSpeed does not support fp16 on the CPU accelerator; "
                         "use bf16 or fp32 (e.g. ds_configs/tiny_cpu_sift.json)")
    return []


def resolve_schedule(ds_config: dict, max_steps_option: Optional[int], notes: List[str],
                     warmup_option: Optional[int] = None) -> int:
    """max_steps, and the optimizer / scheduler sections (edited in place): the paper's AdamW when
    there is none, ``--lr_warmup_steps`` as the scheduler's warmup_num_steps, and "auto" (or absent)
    scheduler values filled in from the run length and lr."""
    if "optimizer" not in ds_config:
        ds_config["optimizer"] = copy.deepcopy(PAPER_ADAMW)
        ds_config.setdefault("scheduler", {"type": "WarmupDecayLR", "params": {}})
        notes.append("ds_config has no optimizer: using the paper's AdamW (lr 1e-4, wd 0.01, betas 0.9/0.999) "
                     "with WarmupDecayLR (warm-up over 0.2% of the steps, then linear decay)")
    optimizer = ds_config["optimizer"]
    scheduler = ds_config.get("scheduler")
    params = scheduler.setdefault("params", {}) if isinstance(scheduler, dict) else {}
    total = params.get("total_num_steps")
    config_total = total if isinstance(total, int) and not isinstance(total, bool) else None
    max_steps = max_steps_option or config_total
    if max_steps is None:
        raise ValueError("--max_steps is required: the ds_config scheduler leaves total_num_steps "
                         f"{'auto' if total == 'auto' else 'unset'} (a --time_budget run needs it too: the "
                         "learning-rate schedule is in steps)")
    if config_total is not None and max_steps_option and max_steps_option != config_total:
        notes.append(f"--max_steps {max_steps_option} differs from the scheduler's total_num_steps {config_total}; "
                     "the schedule is kept as configured")
    if warmup_option is not None:
        if not isinstance(scheduler, dict):
            raise ValueError("--lr_warmup_steps needs a ds_config scheduler section (e.g. WarmupDecayLR)")
        if warmup_option >= max_steps:
            raise ValueError(f"--lr_warmup_steps {warmup_option} must be below max_steps ({max_steps})")
        params["warmup_num_steps"] = warmup_option
    if isinstance(scheduler, dict):
        if scheduler.get("type") in SCHEDULERS_WITH_TOTAL and total in (None, "auto"):
            params["total_num_steps"] = max_steps
        if params.get("warmup_num_steps") in (None, "auto"):
            params["warmup_num_steps"] = max(1, math.ceil(PAPER_WARMUP_FRACTION * max_steps))
        lr = (optimizer.get("params") or {}).get("lr")
        if params.get("warmup_max_lr") in (None, "auto") and lr is not None and scheduler.get("type") != "WarmupCosineLR":
            params["warmup_max_lr"] = lr
        if scheduler.get("type") in ("WarmupDecayLR", "WarmupLR"):
            params.setdefault("warmup_type", "linear")
        bad = sorted(k for k, v in params.items() if v == "auto")
        if bad:
            raise ValueError(f"ds_config scheduler.params {bad}: 'auto' is not supported for these keys")
    return max_steps


def resolve_optimizer_path(ds_config: dict, accelerator: str, notes: List[str]) -> None:
    """On the CPU accelerator, Adam / AdamW run as ``torch.optim.AdamW`` (``"torch_adam": true``)
    unless the config says otherwise: DeepSpeed's CPU FusedAdam keeps beta^t in a process-wide
    accumulator (multiplied each step, recomputed with pow() after a load), so a resumed run drifts
    by an ulp from the uninterrupted one; torch's Adam derives it from the saved step count."""
    optimizer = ds_config.get("optimizer")
    if accelerator != "cpu" or not isinstance(optimizer, dict) or str(optimizer.get("type", "")).lower() not in ADAM_TYPES:
        return
    zero = ds_config.get("zero_optimization") or {}
    params = optimizer.setdefault("params", {})
    if zero.get("offload_optimizer") or TORCH_ADAM in params:
        return
    params[TORCH_ADAM] = True
    notes.append('optimizer: torch.optim.AdamW on the CPU ("torch_adam": true), whose resume is exact; '
                 '"torch_adam": false in the optimizer params selects DeepSpeed\'s CPU FusedAdam')


def resolve_start(sift: SiftConfig, ds_config: dict, lr_warmup_flag: bool) -> SiftConfig:
    """``sift.selection_start_step`` against the scheduler's learning-rate warm-up (``sift_ds.schedule``),
    once ``resolve_schedule`` has filled the scheduler in (``lr_warmup_flag``: set by --lr_warmup_steps)."""
    steps, source = ds_config_warmup(ds_config)
    return resolve_selection_start(sift, steps, source + (" (set by --lr_warmup_steps)" if lr_warmup_flag else ""))


def check_compile(compile_flag: bool, backend: str, ds_config: dict) -> None:
    """``--compile`` and ``--compile_backend`` against the ds_config (one-line ValueErrors)."""
    section = ds_config.get("compile")
    if isinstance(section, dict) and section.get("deepcompile"):
        raise ValueError("ds_config compile.deepcompile: DeepCompile is not supported with SIFT (its passes schedule "
                         "ZeRO's parameter gathers inside the compiled training graph, and the selection's prefix "
                         "forward runs on the same parameters outside it); remove it and pass --compile true")
    if not compile_flag:
        return
    if (ds_config.get("zero_optimization") or {}).get("stage", 0) == 3:
        raise ValueError("--compile true with ZeRO stage 3 is not supported (the selection gathers the partitioned "
                         "parameters around its prefix forward, outside DeepSpeed's compile support for ZeRO-3); "
                         "use ZeRO stage 0-2 or --compile false")
    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise ValueError(f"--compile_backend {backend!r} is not a torch.compile backend (one of: {', '.join(backends)})")
