"""The selection criterion's state (freq_loss's running baseline, ``sift_ds.criteria``) in
``SiftTrainer``'s checkpoints: written beside Trainer's files in ``checkpoint-<step>`` when Trainer
saves one, read back before a resumed ``train`` selects anything, so that the resumed run selects
what the uninterrupted run selected. The state is the same on every rank; the saving process writes it."""
from __future__ import annotations

import os

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

STATE_FILE = "sift_criterion.pt"


class CriterionStateCallback(TrainerCallback):
    """Writes the trainer's criterion state into each checkpoint Trainer saves (nothing when there is none)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        data = self.trainer.sift_frontend.criterion_state(self.trainer.model)
        if data is not None and args.should_save:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            torch.save(data, os.path.join(folder, STATE_FILE))
        return control


def load_criterion_state(trainer, resume_from_checkpoint) -> None:
    """Restore the criterion state of ``resume_from_checkpoint`` (a checkpoint path, or True: the last
    checkpoint in ``args.output_dir``, as Trainer reads it); a checkpoint without one restores nothing."""
    path = get_last_checkpoint(trainer.args.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
    if isinstance(path, (str, os.PathLike)) and os.path.isfile(os.path.join(path, STATE_FILE)):
        state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)
        trainer.sift_frontend.load_criterion_state(state, trainer.model)
