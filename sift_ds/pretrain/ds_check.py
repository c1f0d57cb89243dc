"""The ds_config checked against DeepSpeed itself before any process group, data or model exists:
optimizer and scheduler types DeepSpeed can build, every value DeepSpeed's own config classes
validate (ZeRO stage, ...), and top-level keys DeepSpeed never reads (a typo is otherwise silently
ignored), with the closest key it does read."""
from __future__ import annotations

import copy
import difflib
import inspect
from typing import Iterable, List, Optional, Set

import pydantic
import torch
from deepspeed.runtime import lr_schedules
from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS, DeepSpeedConfig, DeepSpeedConfigError

OWN_SECTIONS = ("sift", "pretrain")  # read by sift_ds, not DeepSpeed
WARMUP_SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR")  # each needs warmup_num_steps > 0


def _closest(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _torch_classes(module, base) -> List[str]:
    return sorted(n for n, c in vars(module).items() if inspect.isclass(c) and issubclass(c, base) and c is not base)


def check_types(ds_config: dict) -> None:
    """ValueError when the optimizer or scheduler ``type`` is one DeepSpeed cannot build."""
    optimizer = ds_config.get("optimizer")
    if optimizer is not None:
        kind = optimizer.get("type") if isinstance(optimizer, dict) else None
        torch_optimizers = _torch_classes(torch.optim, torch.optim.Optimizer)
        if not isinstance(kind, str) or (kind.lower() not in DEEPSPEED_OPTIMIZERS and kind not in torch_optimizers):
            raise ValueError(f"ds_config optimizer.type {kind!r} is not an optimizer DeepSpeed knows"
                             f"{_closest(str(kind), DEEPSPEED_OPTIMIZERS + torch_optimizers)} (DeepSpeed's: "
                             f"{', '.join(DEEPSPEED_OPTIMIZERS)}; or a torch.optim class, e.g. SGD)")
    scheduler = ds_config.get("scheduler")
    if scheduler is not None:
        kind = scheduler.get("type") if isinstance(scheduler, dict) else None
        torch_schedulers = _torch_classes(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)
        if not isinstance(kind, str) or (kind not in lr_schedules.VALID_LR_SCHEDULES and kind not in torch_schedulers):
            raise ValueError(f"ds_config scheduler.type {kind!r} is not a scheduler DeepSpeed knows"
                             f"{_closest(str(kind), lr_schedules.VALID_LR_SCHEDULES + torch_schedulers)} "
                             f"(DeepSpeed's: {', '.join(lr_schedules.VALID_LR_SCHEDULES)}; or a "
                             "torch.optim.lr_scheduler class)")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_values(ds_config: dict) -> None:
    """ValueError for values DeepSpeed accepts at start-up and trips on later (or silently ignores):
    a learning rate that is not a positive number, a warm-up scheduler's warm-up of no steps, a
    negative gradient clipping."""
    params = (ds_config.get("optimizer") or {}).get("params") if isinstance(ds_config.get("optimizer"), dict) else None
    if isinstance(params, dict) and "lr" in params and not (_number(params["lr"]) and params["lr"] > 0):
        raise ValueError(f"ds_config optimizer.params.lr must be a number > 0, got {params['lr']!r}")
    scheduler = ds_config.get("scheduler")
    params = scheduler.get("params") if isinstance(scheduler, dict) else None
    if (isinstance(params, dict) and scheduler.get("type") in WARMUP_SCHEDULERS
            and params.get("warmup_num_steps", "auto") != "auto"):
        steps = params["warmup_num_steps"]
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
            raise ValueError(f"ds_config scheduler.params.warmup_num_steps must be an integer > 0 (DeepSpeed's "
                             f"{scheduler['type']} refuses 0), got {steps!r}")
    clipping = ds_config.get("gradient_clipping")
    if clipping is not None and not (_number(clipping) and clipping >= 0):
        raise ValueError(f"ds_config gradient_clipping must be a number >= 0 (0: no clipping), got {clipping!r}")


class _ReadRecorder(dict):
    """A dict that records which keys are looked up (DeepSpeedConfig reads its sections from it)."""

    def __init__(self, data: dict):
        super().__init__(data)
        self.read: Set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def keys(self):
        return _RecordingKeys(self)


class _RecordingKeys:
    def __init__(self, owner: _ReadRecorder):
        self.owner = owner

    def __contains__(self, key) -> bool:
        return key in self.owner

    def __iter__(self):
        return iter(dict.keys(self.owner))

    def __len__(self) -> int:
        return len(self.owner)


def check_with_deepspeed(ds_config: dict) -> List[str]:
    """Build DeepSpeed's own ``DeepSpeedConfig`` from the config (a world of one, so without
    ``train_batch_size``): its validation errors become one-line ValueErrors; returns warnings for
    top-level keys it never read (keys starting with "_", such as "_comment", are notes for people)."""
    config = {k: copy.deepcopy(v) for k, v in ds_config.items() if k not in OWN_SECTIONS + ("train_batch_size",)}
    recorder = _ReadRecorder(config)
    try:
        DeepSpeedConfig(recorder)
    except pydantic.ValidationError as err:
        raise ValueError(_pydantic_line(err, ds_config)) from None
    except (DeepSpeedConfigError, AssertionError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"ds_config: DeepSpeed rejects it: {err}") from None
    read = recorder.read | {"train_batch_size"} | {k for k in ds_config if k.startswith("_")}  # "_comment" keys
    return [f"ds_config key {key!r} is not read by DeepSpeed and is ignored{_closest(key, read)}"
            for key in ds_config if key not in read and key not in OWN_SECTIONS]


def _pydantic_line(err: pydantic.ValidationError, ds_config: dict) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    section = _section_of(first["loc"], ds_config)
    where = f"{section}.{loc}" if section else loc
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"ds_config {where}: {first['msg']}, got {first.get('input')!r}{more}"


def _section_of(loc, ds_config: dict) -> Optional[str]:
    """The top-level section whose object holds the failing key (pydantic names only the model)."""
    if not loc:
        return None
    for name, section in ds_config.items():
        if isinstance(section, dict) and loc[0] in section and name not in OWN_SECTIONS:
            return str(name)
    return None
