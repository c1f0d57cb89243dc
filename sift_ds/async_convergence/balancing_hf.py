"""The loss-balancing baselines in ``AsyncConvergenceTrainer``: the start-up checks, the end of each
optimizer step (DWA's windows), the learned weights' gradients averaged over the DDP ranks
(uncertainty), and PCGrad's training step (one backward per task, the surgery at the optimizer step)."""
from __future__ import annotations

import torch
from transformers import TrainerCallback

from .balancing import SECTION, Balancer
from .config import AsyncConvergenceError


def check_trainer(trainer, balancer: Balancer) -> None:
    """Refuse, in one line, what the method cannot run under."""
    if balancer.method == "uniform":
        return
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        raise AsyncConvergenceError(f"{SECTION}: method {balancer.method!r} runs under the Trainer's own DDP, "
                                    "not under DeepSpeed or FSDP")
    if balancer.parameters() and trainer.optimizer is not None:
        raise AsyncConvergenceError(f"{SECTION}: method {balancer.method!r} trains its log-variances with the "
                                    "Trainer's optimizer: leave optimizers= out")
    if balancer.method == "pcgrad" and trainer.args.fp16:
        raise AsyncConvergenceError(f"{SECTION}: method 'pcgrad' does not run with fp16 (its per-task gradients "
                                    "are not loss-scaled): use bf16 or fp32")


def add_parameters(optimizer: torch.optim.Optimizer, balancer: Balancer) -> None:
    """The balancer's learned weights join the optimizer, without weight decay (once)."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params = [p for p in balancer.parameters() if id(p) not in held]
    if params:
        optimizer.add_param_group({"params": params, "weight_decay": 0.0})


class BalancingSteps(TrainerCallback):
    """After each optimizer step: the learned weights' gradients cleared (the Trainer clears only the
    model's) and the balancer's window bookkeeping, with the ranks' sums."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        balancer, accelerator = self.trainer.balancer, self.trainer.accelerator
        for p in balancer.parameters():
            p.grad = None
        reduce = lambda t: accelerator.reduce(t.to(args.device), reduction="sum")
        balancer.step_end(state.global_step, float(state.epoch).is_integer(), reduce)


def average_parameter_grads(trainer, balancer: Balancer) -> None:
    """At the step's last micro-batch: the learned weights' gradients averaged over the ranks (they
    are outside the DDP module, so DDP does not)."""
    if trainer.accelerator.num_processes > 1 and trainer.accelerator.sync_gradients:
        for p in balancer.parameters():
            if p.grad is not None:
                p.grad = trainer.accelerator.reduce(p.grad, reduction="mean")


def pcgrad_training_step(trainer, model, inputs) -> torch.Tensor:
    """One micro-batch: per-task gradients (one backward each, outside DDP's own reduction), and at
    the step's last micro-batch the rank-averaged, projected total into ``.grad``. Returns the loss
    for the logs, scaled for gradient accumulation as the Trainer's own step does."""
    model.train()
    inputs = trainer._prepare_inputs(inputs)
    scale = 1.0 / trainer.current_gradient_accumulation_steps
    params = [p for p in model.parameters() if p.requires_grad]
    balancer = trainer.balancer
    with trainer.accelerator.no_sync(model):
        with trainer.compute_loss_context_manager():
            _, losses = trainer.task_losses(model, inputs)
        balancer.accumulate(losses, params, scale)
    if trainer.accelerator.sync_gradients:
        mean = (lambda t: trainer.accelerator.reduce(t, reduction="mean")) if trainer.accelerator.num_processes > 1 else None
        balancer.apply(params, mean)
    return (balancer.combine(losses) * scale).detach()
