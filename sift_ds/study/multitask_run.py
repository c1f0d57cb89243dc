"""One run of the asynchronous-convergence study: an arm (``multitask_arms.Arm``) and a seed, trained
with ``AsyncConvergenceTrainer`` on the prepared data (``multitask_prep``), evaluated on validation
every ``eval_every`` steps and on the test split at each task's best validation point and at the end.

The seed sets the initial weights and the order of the training batches; the data and its split are
the same for every seed. A run writes to its folder:

* ``metrics.jsonl``: the Trainer's log history, one record a line (training logs with each task's
  loss and distillation share, evaluations with ``eval_<task>_accuracy`` and ``eval_<task>_loss``);
* ``result.json``, written last: per task the best validation accuracy, its step and the test
  metrics of the model at that step; the test and validation metrics at the end; the step at which
  each task converged (asynchronous-convergence arms); the training time."""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback, TrainingArguments, default_data_collator, set_seed

from ..async_convergence.config import TaskSpec
from ..async_convergence.hf import AsyncConvergenceTrainer
from ..async_convergence.task_metrics import example_statistics, metrics_from_sums
from ..async_convergence.teachers import cpu_weights
from .multitask_arms import Arm
from .multitask_model import MultiTaskEncoder, encoder_config

RESULT = "result.json"
HISTORY = "metrics.jsonl"
IGNORE = -100


@dataclass(frozen=True)
class Settings:
    """The model (BERT L<layers>-H<hidden>, inputs cut at ``max_len`` tokens), the training (AdamW, a
    linear warm-up over the ``warmup`` share of ``steps``, then a linear decay to 0), the evaluations,
    and asynchronous convergence's rule and distillation (``patience`` evaluations without a gain above
    ``min_delta`` in validation accuracy; KD at ``temperature``, weight ``kd_weight``)."""
    layers: int = 2
    hidden: int = 64
    max_len: int = 64
    # training
    steps: int = 450
    batch: int = 16
    lr: float = 2e-3
    warmup: float = 0.06
    weight_decay: float = 0.01
    # evaluation, and the CPU threads of a run
    eval_every: int = 25
    eval_batch: int = 256
    threads: int = 1
    # asynchronous convergence: the library's defaults unless the study sets them
    patience: int = TaskSpec.patience
    min_delta: float = TaskSpec.min_delta
    temperature: float = TaskSpec.temperature
    kd_weight: float = TaskSpec.kd_weight


def trim(rows):
    """``default_data_collator``, then the padding columns that no row of the batch uses cut off."""
    batch = default_data_collator(rows)
    width = max(int(batch["attention_mask"].sum(1).max()), 1)
    batch["input_ids"], batch["attention_mask"] = batch["input_ids"][:, :width], batch["attention_mask"][:, :width]
    return batch


def evaluate(model: torch.nn.Module, split: datasets.Dataset, tasks, batch: int) -> Dict[str, Dict[str, float]]:
    """Per task {"loss", "accuracy"} over the rows it labels."""
    was_training = model.training
    model.eval()
    sums = {t: torch.zeros(3, dtype=torch.float64) for t in tasks}
    with torch.no_grad():
        for rows in DataLoader(split, batch_size=batch, collate_fn=trim):
            logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"])["logits"]
            for t in tasks:
                sums[t] += example_statistics(logits[t], rows[f"{t}_labels"]).sum(0)
    model.train(was_training)
    return metrics_from_sums(sums)


class BestPoints(TrainerCallback):
    """Per task the best validation accuracy so far (strictly better than the earlier ones), its step,
    and the weights at each such step that some task still holds as its best."""

    def __init__(self, tasks):
        self.tasks = tuple(tasks)
        self.best: Dict[str, Dict[str, Any]] = {}
        self.weights: Dict[int, Dict[str, torch.Tensor]] = {}

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        step = state.global_step
        for t in self.tasks:
            value = metrics[f"eval_{t}_accuracy"]
            if t not in self.best or value > self.best[t]["val_accuracy"]:
                self.best[t] = {"val_accuracy": value, "val_loss": metrics[f"eval_{t}_loss"], "step": step}
                if step not in self.weights:
                    self.weights[step] = cpu_weights(model)
        held = {b["step"] for b in self.best.values()}
        self.weights = {s: w for s, w in self.weights.items() if s in held}


def async_settings(arm: Arm, s: Settings) -> Optional[Dict[str, Any]]:
    """Asynchronous convergence's settings for the arm (every task watched on validation accuracy), or
    None for an arm without it."""
    if not arm.teacher:
        return None
    task = {"metric": "accuracy", "mode": "max", "patience": s.patience, "min_delta": s.min_delta,
            "temperature": s.temperature, "kd_weight": s.kd_weight}
    return {"teacher": arm.teacher, "tasks": {t: dict(task) for t in arm.tasks}}


def balancing_settings(arm: Arm, s: Settings) -> Dict[str, Any]:
    """The arm's loss balancing; DWA's loss window is the evaluation interval."""
    return {"method": arm.balancing, "window": s.eval_every} if arm.balancing == "dwa" else {"method": arm.balancing}


def build_trainer(arm: Arm, seed: int, splits: Mapping[str, datasets.Dataset], classes: Mapping[str, int],
                  vocab_size: int, s: Settings, folder: str, callbacks=()) -> AsyncConvergenceTrainer:
    train = splits["train"]
    if arm.single:  # a single-task model sees only the examples its task labels
        column = f"{arm.tasks[0]}_labels"
        train = train.filter(lambda labels: [v != IGNORE for v in labels], input_columns=column, batched=True)
        train = train.remove_columns("example_index").add_column("example_index", list(range(len(train))))
    set_seed(seed)
    model = MultiTaskEncoder(encoder_config(vocab_size, s.layers, s.hidden, s.max_len), {t: classes[t] for t in arm.tasks})
    args = TrainingArguments(output_dir=os.path.join(folder, "trainer"), max_steps=s.steps, per_device_train_batch_size=s.batch,
                             per_device_eval_batch_size=s.eval_batch, learning_rate=s.lr, warmup_steps=s.warmup,
                             lr_scheduler_type="linear", weight_decay=s.weight_decay, eval_strategy="steps",
                             eval_steps=s.eval_every, logging_steps=s.eval_every, save_strategy="no", report_to=[],
                             seed=seed, data_seed=seed, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    return AsyncConvergenceTrainer(model=model, args=args, train_dataset=train, eval_dataset=splits["validation"],
                                   data_collator=trim, tasks=arm.tasks, callbacks=list(callbacks),
                                   async_convergence=async_settings(arm, s), balancing=balancing_settings(arm, s))


def run(arm: Arm, seed: int, splits: Mapping[str, datasets.Dataset], classes: Mapping[str, int], vocab_size: int,
        s: Settings, folder: str) -> Dict[str, Any]:
    """Trains and evaluates one run; writes ``metrics.jsonl`` and then ``result.json``; returns the result."""
    os.makedirs(folder, exist_ok=True)
    torch.set_num_threads(s.threads)
    best = BestPoints(arm.tasks)
    trainer = build_trainer(arm, seed, splits, classes, vocab_size, s, folder, [best])
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # nothing is saved there
    model = trainer.model
    test, tasks = splits["test"], arm.tasks
    final_test = evaluate(model, test, tasks, s.eval_batch)
    test_at = {}
    for step, weights in best.weights.items():
        snapshot = copy.deepcopy(model)
        snapshot.load_state_dict(weights)
        test_at[step] = evaluate(snapshot, test, tasks, s.eval_batch)
    evals = [r for r in trainer.state.log_history if "eval_loss" in r]
    last = evals[-1]
    telemetry = trainer.convergence.telemetry(trainer.state.global_step) if arm.teacher else {}
    result = {"arm": arm.name, "seed": seed, "tasks": list(tasks), "steps": trainer.state.global_step,
              "train_s": train_s, "train_examples": len(trainer.train_dataset), "settings": asdict(s),
              "best": {t: dict(best.best[t], test_accuracy=test_at[best.best[t]["step"]][t]["accuracy"],
                               test_loss=test_at[best.best[t]["step"]][t]["loss"]) for t in tasks},
              "final": {t: {"val_accuracy": last[f"eval_{t}_accuracy"], "val_loss": last[f"eval_{t}_loss"],
                            "test_accuracy": final_test[t]["accuracy"], "test_loss": final_test[t]["loss"]} for t in tasks},
              "converged_step": {t: telemetry[t]["converged_step"] for t in tasks} if arm.teacher else {}}
    with open(os.path.join(folder, HISTORY), "w", encoding="utf-8") as f:
        for record in trainer.state.log_history:
            f.write(json.dumps(record) + "\n")
    with open(os.path.join(folder, RESULT), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result


def load_result(folder: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(folder, RESULT)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
