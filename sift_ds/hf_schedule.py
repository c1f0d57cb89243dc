"""``SiftTrainer``'s selection start against Trainer's learning-rate warm-up (``sift_ds.schedule``).

The warm-up is what Trainer builds: ``TrainingArguments.get_warmup_steps(max_steps)`` (``warmup_steps``,
or its ratio of the run: ``warmup_ratio`` in transformers 4, ``warmup_steps`` below 1 in 5), none for the
``constant`` and ``reduce_lr_on_plateau`` schedules, the ds_config's scheduler under DeepSpeed (its
``"auto"`` warm-up filled in as Trainer fills it), and unknown for a scheduler passed as
``optimizers=``. The start is resolved and checked as soon as ``max_steps`` is known: at construction
when ``TrainingArguments.max_steps`` is set, and again at the start of training, before the first step.
"""
from __future__ import annotations

import copy

from transformers import TrainerCallback

from .config import SiftConfig
from .schedule import Warmup, ds_config_warmup, resolve_selection_start

NO_WARMUP_SCHEDULES = ("constant", "reduce_lr_on_plateau")  # Trainer's schedules that ignore the warm-up


def trainer_warmup(args, max_steps: int, user_scheduler: bool) -> Warmup:
    """(warm-up steps or None, what says so) of the schedule Trainer runs for ``max_steps`` steps."""
    hf_deepspeed = getattr(args, "hf_deepspeed_config", None)
    scheduler = hf_deepspeed.config.get("scheduler") if hf_deepspeed is not None else None
    if scheduler is not None:  # DeepSpeed's scheduler; Trainer fills an "auto" warm-up from its arguments
        scheduler = copy.deepcopy(scheduler)
        params = scheduler.setdefault("params", {})
        if params.get("warmup_num_steps") == "auto":
            params["warmup_num_steps"] = max(1, args.get_warmup_steps(max_steps))
        return ds_config_warmup({"scheduler": scheduler})
    if user_scheduler:
        return None, "the lr_scheduler passed to Trainer as optimizers="
    kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    if kind in NO_WARMUP_SCHEDULES:
        return 0, f"lr_scheduler_type {kind} has no warm-up"
    ratio = getattr(args, "warmup_ratio", None)
    given = f"warmup_steps {args.warmup_steps}" + (f", warmup_ratio {ratio}" if ratio else "")
    return args.get_warmup_steps(max_steps), f"TrainingArguments {given} over {max_steps} steps"


class SelectionStart(TrainerCallback):
    """Resolves ``sift.selection_start_step`` for ``trainer`` (a ``SiftTrainer``) from ``config`` as
    given, once ``max_steps`` is known, and sets the trainer's and its front-end's config."""

    def __init__(self, trainer, config: SiftConfig, user_scheduler: bool):
        self.trainer, self.config, self.user_scheduler = trainer, config, user_scheduler

    def resolve(self, max_steps: int) -> None:
        warmup = trainer_warmup(self.trainer.args, max_steps, self.user_scheduler)
        resolved = resolve_selection_start(self.config, *warmup)
        self.trainer.sift_config = self.trainer.sift_frontend.config = resolved

    def on_train_begin(self, args, state, control, **kwargs):
        self.resolve(state.max_steps)
