"""Asynchronous convergence in multi-task learning via knowledge distillation from converged tasks
(Lu et al., 2022): a method of its own beside SIFT's selection core, sharing none of its code.

Each task's validation metric is watched (``ConvergenceRule``); once a task has converged, its loss
switches to KL distillation against the model's own outputs at the task's best evaluation, from a
frozen copy or from logits cached once over the training set (``AsyncConvergence``). Front-ends:
``sift_ds.async_convergence.hf.AsyncConvergenceTrainer`` (transformers.Trainer) and the pretraining
job's ``--async_convergence`` (``mlm+nsp``: NSP distilled once converged)."""
from .config import AsyncConvergenceConfig, AsyncConvergenceError, TaskSpec, from_dict
from .controller import AsyncConvergence
from .convergence import ConvergenceRule
from .distillation import distill_share, kd_loss

__all__ = ["AsyncConvergence", "AsyncConvergenceConfig", "AsyncConvergenceError", "ConvergenceRule", "TaskSpec",
           "distill_share", "from_dict", "kd_loss"]
