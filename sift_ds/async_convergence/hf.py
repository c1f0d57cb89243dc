"""``AsyncConvergenceTrainer``: a ``transformers.Trainer`` for one model with several task heads, whose
tasks switch to distillation from their own best outputs once converged.

    from sift_ds.async_convergence.hf import AsyncConvergenceTrainer
    trainer = AsyncConvergenceTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                                      async_convergence={"tasks": {"topic": {"patience": 2}}})

The model's forward takes the batch's inputs and returns the task logits: a dict {task: logits}, or an
output whose ``logits`` is one. Task ``t``'s labels are the batch's ``t_labels`` column (-100: none);
the tasks are ``tasks=`` or ``model.task_names``. Each evaluation gives ``eval_<task>_loss`` and
``eval_<task>_accuracy`` (and ``eval_loss``, their sum) and feeds the convergence rules; each training
log adds ``<task>_loss`` (the task's loss as trained, averaged since the last log and over the ranks),
``<task>_distill_share`` and, once converged, ``<task>_converged_step``. The state
(``AsyncConvergence.state_dict``) is saved in each checkpoint as ``async_convergence.pt`` and restored
on resume.

``balancing=`` picks how the task losses are combined (``sift_ds.async_convergence.balancing``:
uniform, uncertainty, dwa or pcgrad); each training log then has ``<task>_weight``. Without
``async_convergence`` no task is watched or distilled, and no evaluation is needed."""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .balancing import build_balancer
from .balancing_hf import BalancingSteps, add_parameters, average_parameter_grads, check_trainer, pcgrad_training_step
from .config import AsyncConvergenceConfig, AsyncConvergenceError, from_dict
from .controller import AsyncConvergence
from .task_metrics import METRICS, example_statistics, metrics_from_sums
from .teachers import cpu_weights

STATE_FILE = "async_convergence.pt"


def task_logits(outputs: Any) -> Mapping[str, torch.Tensor]:
    logits = outputs["logits"] if isinstance(outputs, Mapping) and "logits" in outputs else outputs
    if not isinstance(logits, Mapping):
        raise TypeError("AsyncConvergenceTrainer: the model must return {task: logits} or an output whose "
                        f"'logits' is that dict, got {type(logits).__name__}")
    return logits


def model_logits(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return task_logits(module(**inputs))


class AsyncConvergenceTrainer(Trainer):
    loss_is_scaled_for_ga = False  # each task's loss is a mean over the micro-batch

    def __init__(self, *args, async_convergence: Any = None, tasks: Optional[Sequence[str]] = None,
                 balancing: Any = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks = tuple(tasks if tasks is not None else getattr(self.model, "task_names", ()))
        if not self.tasks:
            raise AsyncConvergenceError("AsyncConvergenceTrainer: tasks: name the model's tasks (tasks=[...] or "
                                        "model.task_names)")
        config = AsyncConvergenceConfig() if async_convergence is None else from_dict(async_convergence)
        config.check(self.tasks, {t: METRICS for t in self.tasks})
        if config.tasks and (self.args.eval_strategy == "no" or self.eval_dataset is None):
            raise AsyncConvergenceError("AsyncConvergenceTrainer: eval_strategy: the convergence rules need "
                                        "evaluations during training (eval_strategy 'steps' or 'epoch' and an eval_dataset)")
        self.convergence = AsyncConvergence(config, model_logits, self._copy_model, self._training_batches)
        self._task_loss_sums = torch.zeros(len(self.tasks), dtype=torch.float64)
        self._task_loss_batches = 0
        static = {t: config.task(t).loss_weight if t in config.names else 1.0 for t in self.tasks}
        self.balancer = build_balancer(balancing, self.tasks, static, self.args.device, self.args.seed)
        check_trainer(self, self.balancer)
        self.add_callback(BalancingSteps(self))

    # ---- the batch's columns ----
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        extra = [f"{t}_labels" for t in self.tasks] + [self.convergence.config.index_key]
        self._signature_columns += [c for c in extra if c not in self._signature_columns]

    def _split(self, inputs: Mapping[str, Any]):
        inputs = dict(inputs)
        labels = {t: inputs.pop(f"{t}_labels") for t in self.tasks if f"{t}_labels" in inputs}
        return inputs, labels, inputs.pop(self.convergence.config.index_key, None)

    # ---- teachers ----
    def _copy_model(self, weights: Dict[str, torch.Tensor]) -> torch.nn.Module:
        clone = copy.deepcopy(self.accelerator.unwrap_model(self.model))
        for p in clone.parameters():
            p.grad = None
        clone.load_state_dict(weights)
        return clone

    def _training_batches(self):
        """The training set in order, on every rank (each builds the whole cache)."""
        dataset = self.train_dataset
        collate = self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="cached teacher")
        else:
            collate = self._get_collator_with_removed_columns(collate, description="cached teacher")
        for batch in DataLoader(dataset, batch_size=self.args.eval_batch_size, collate_fn=collate):
            inputs, _, index = self._split(self._prepare_inputs(batch))
            if index is None:
                raise AsyncConvergenceError(f"async_convergence: index_key: teacher 'cached' needs the training "
                                            f"set's example indices in column {self.convergence.config.index_key!r}")
            yield inputs, index

    # ---- training ----
    def task_losses(self, model, inputs):
        """The model's outputs and each task's loss (unweighted; a converged task's after its switch)."""
        inputs, labels, index = self._split(inputs)
        outputs = model(**inputs)
        total, per_task = self.convergence.loss(self.state.global_step, task_logits(outputs), labels, inputs, index)
        if model.training:  # summed on the device: no host sync per micro-batch
            zero = total.detach().new_zeros(())
            losses = torch.stack([per_task[t].detach() if t in per_task else zero for t in self.tasks]).double()
            self._task_loss_sums = self._task_loss_sums.to(losses.device) + losses
            self._task_loss_batches += 1
            self.balancer.observe(per_task)
        return outputs, per_task

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs, per_task = self.task_losses(model, inputs)
        total = self.balancer.combine(per_task)
        return (total, outputs) if return_outputs else total

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.balancer.method == "pcgrad":
            return pcgrad_training_step(self, model, inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        average_parameter_grads(self, self.balancer)
        return loss

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        add_parameters(optimizer, self.balancer)
        return optimizer

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs and "eval_loss" not in logs:
            count = torch.tensor([self._task_loss_batches], dtype=torch.float64)
            sums = torch.cat([self._task_loss_sums.to(self.args.device), count.to(self.args.device)])
            sums = self.accelerator.reduce(sums, reduction="sum").cpu()
            step = self.state.global_step
            for i, task in enumerate(self.tasks):
                logs[f"{task}_loss"] = sums[i].item() / max(sums[-1].item(), 1)
            for task, weight in self.balancer.task_weights().items():
                logs[f"{task}_weight"] = weight
            for task, info in self.convergence.telemetry(step).items():
                logs[f"{task}_distill_share"] = info["distill_share"]
                if info["converged_step"] is not None:
                    logs[f"{task}_converged_step"] = info["converged_step"]
            self._task_loss_sums = torch.zeros_like(self._task_loss_sums)
            self._task_loss_batches = 0
        super().log(logs, start_time)

    # ---- evaluation ----
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> Dict[str, float]:
        model = self.model
        was_training = model.training
        model.eval()
        sums = {t: torch.zeros(3, dtype=torch.float64) for t in self.tasks}
        with torch.no_grad():
            for batch in self.get_eval_dataloader(eval_dataset):
                inputs, labels, _ = self._split(self._prepare_inputs(batch))
                logits = model_logits(model, inputs)
                for task, task_labels in labels.items():
                    stats = self.accelerator.gather_for_metrics(example_statistics(logits[task], task_labels))
                    sums[task] += stats.sum(0).cpu()
        model.train(was_training)
        self.task_metrics = metrics_from_sums(sums)
        metrics = {f"{metric_key_prefix}_{t}_{m}": v for t, values in self.task_metrics.items() for m, v in values.items()}
        metrics[f"{metric_key_prefix}_loss"] = sum(v["loss"] for v in self.task_metrics.values())
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _evaluate(self, trial, ignore_keys_for_eval, skip_scheduler: bool = False) -> Dict[str, float]:
        """The evaluations during training feed the convergence rules."""
        metrics = super()._evaluate(trial, ignore_keys_for_eval, skip_scheduler)
        model = self.accelerator.unwrap_model(self.model)
        self.convergence.observe(self.state.global_step, self.task_metrics, lambda: cpu_weights(model))
        return metrics

    # ---- checkpoints ----
    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            state = {"controller": self.convergence.state_dict(), "task_loss_sums": self._task_loss_sums.cpu(),
                     "task_loss_batches": self._task_loss_batches, "balancing": self.balancer.state_dict()}
            torch.save(state, os.path.join(folder, STATE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, STATE_FILE)
        if not os.path.exists(path):
            raise AsyncConvergenceError(f"AsyncConvergenceTrainer: {path} is missing: the checkpoint was not made "
                                        "by AsyncConvergenceTrainer, so the tasks' convergence state is unknown")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.convergence.load_state_dict(state["controller"])
        self._task_loss_sums = state["task_loss_sums"].clone()
        self._task_loss_batches = state["task_loss_batches"]
        self.balancer.load_state_dict(state.get("balancing", {"method": "uniform", "tasks": list(self.tasks)}))
