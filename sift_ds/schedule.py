"""Where selection starts, tied to the learning-rate schedule: the one rule every front-end applies.

``sift.selection_start_step`` "auto" starts selection at ``selection_start_share`` of the learning-rate
warm-up (rounded half up), and a start at or after the learning-rate peak (the end of the warm-up; a
schedule without one peaks at step 0) is refused unless ``sift.start_after_lr_peak`` says it is
deliberate: the measured studies started selection at 30 of 100 warm-up steps, and starting at the peak
collapsed entropy-SIFT (docs/results.md, "Timing matters for entropy").

Each front-end finds its warm-up and calls ``resolve_selection_start``: the DeepSpeed engine and the
pretraining job from the ds_config's scheduler (``ds_config_warmup``) or the scheduler object
(``scheduler_warmup``), ``SiftTrainer`` from ``TrainingArguments``, the Megatron drop-in from Megatron's
``--lr-warmup-*`` arguments.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple

from .config import SiftConfig
from .config_io import AUTO

# DeepSpeed's schedulers whose warm-up is warmup_num_steps (default 1000; DeepSpeed uses at least 2).
DS_WARMUP_SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR")
DS_DEFAULT_WARMUP = 1000
DS_MIN_WARMUP = 2
ONE_CYCLE = "OneCycle"  # its learning rate rises for cycle_first_step_size steps (default 2000)
ONE_CYCLE_DEFAULT_STEP = 2000

Warmup = Tuple[Optional[int], str]  # (learning-rate warm-up steps, or None when unknown; what says so)


def auto_start(share: float, lr_warmup_steps: int) -> int:
    """``round(share x warm-up)``, halves rounded up (0.3 x 5 = 1.5 -> 2)."""
    return int(math.floor(float(share) * lr_warmup_steps + 0.5))


def resolve_selection_start(config: SiftConfig, lr_warmup_steps: Optional[int], source: str) -> SiftConfig:
    """``config`` with ``selection_start_step`` a step number, checked against the learning-rate warm-up.

    ``lr_warmup_steps``: the optimizer steps of the warm-up (the learning rate peaks at that step; 0:
    no warm-up), or None when the front-end cannot know it; ``source``: what gave it (or why it is
    unknown), named in the errors. "auto" with an unknown warm-up, and a start at or after the peak
    without ``start_after_lr_peak``, are one-line ValueErrors. A disabled config is only resolved."""
    start = config.selection_start_step
    given = f'"auto" (step {{}})' if start == AUTO else "{}"
    if start == AUTO:
        if lr_warmup_steps is None:
            if not config.enabled:
                return dataclasses.replace(config, selection_start_step=0)
            raise ValueError(f'sift.selection_start_step "auto" starts selection at a share of the learning-rate '
                             f"warm-up, which is unknown here ({source}): give sift.selection_start_step as a step "
                             "number before the learning rate peaks")
        start = auto_start(config.selection_start_share, lr_warmup_steps)
        config = dataclasses.replace(config, selection_start_step=start)
        config.validate()  # the annealing keys against the resolved start
    if config.enabled and lr_warmup_steps is not None and start >= lr_warmup_steps and not config.start_after_lr_peak:
        fix = (f'start it inside the warm-up ("auto": step {auto_start(config.selection_start_share, lr_warmup_steps)})'
               if lr_warmup_steps else "give the schedule a learning-rate warm-up")
        raise ValueError(
            f"sift.selection_start_step={given.format(start)} starts selection at or after the learning-rate peak "
            f"(step {lr_warmup_steps}: {source}); starting at the peak collapsed entropy-SIFT in the measurements: {fix}, or "
            "set sift.start_after_lr_peak true if this is deliberate")
    return config


def ds_config_warmup(ds_config: Mapping[str, Any]) -> Warmup:
    """The learning-rate warm-up of a ds_config's ``scheduler`` section, as DeepSpeed builds it."""
    scheduler = ds_config.get("scheduler")
    if scheduler is None:
        return 0, "the ds_config has no scheduler, so the learning rate is constant from step 0"
    kind = scheduler.get("type") if isinstance(scheduler, Mapping) else None
    params = (scheduler.get("params") or {}) if isinstance(scheduler, Mapping) else {}
    if kind in DS_WARMUP_SCHEDULERS:
        steps = params.get("warmup_num_steps", DS_DEFAULT_WARMUP)
        if not isinstance(steps, int) or isinstance(steps, bool):
            return None, f"the ds_config scheduler's warmup_num_steps is {steps!r}"
        effective = max(DS_MIN_WARMUP, steps)
        clamp = f", which DeepSpeed raises to {effective}" if effective != steps else ""
        return effective, f"{kind} warmup_num_steps {steps}{clamp}"
    if kind == ONE_CYCLE:
        steps = params.get("cycle_first_step_size", ONE_CYCLE_DEFAULT_STEP)
        if not isinstance(steps, int) or isinstance(steps, bool):
            return None, f"the ds_config scheduler's cycle_first_step_size is {steps!r}"
        return steps, f"OneCycle cycle_first_step_size {steps}"
    return None, f"the ds_config scheduler {kind!r} has no warm-up sift_ds knows"


def scheduler_warmup(scheduler: Any) -> Warmup:
    """The warm-up of a built scheduler object (a DeepSpeed engine's ``lr_scheduler``): DeepSpeed's
    warm-up schedulers carry it; None is a constant learning rate; anything else is unknown."""
    if scheduler is None:
        return 0, "no learning-rate scheduler, so the learning rate is constant from step 0"
    steps = getattr(scheduler, "warmup_num_steps", None)
    if type(scheduler).__name__ in DS_WARMUP_SCHEDULERS and isinstance(steps, int):
        return steps, f"{type(scheduler).__name__} warmup_num_steps {steps}"
    return None, f"the learning-rate scheduler is a {type(scheduler).__name__}"
