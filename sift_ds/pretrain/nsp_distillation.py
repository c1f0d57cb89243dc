"""The pretraining job's front-end of asynchronous convergence (``sift_ds.async_convergence``):
``--async_convergence`` with objective ``mlm+nsp``. The next-sentence task is watched on the job's
validation batches and, once converged, distilled from a frozen copy of the model at its best
evaluation, while MLM keeps training on its labels.

Nothing in SIFT's selection path changes: the selection scores come from the MLM head's early exit as
before, and this front-end only replaces the NSP term of the kept rows' loss (BertForPreTraining's
loss is MLM + NSP cross-entropy; after the switch its NSP cross-entropy is swapped for the NSP task's
loss). Until the task converges (and with the default ``loss_weight`` 1) the forward and its loss are
the model's own. Each record of ``metrics.jsonl`` carries ``nsp/state`` ("training" or
"distilling"), ``nsp/converged_step``, ``nsp/distill_share``, ``nsp/best`` and ``nsp/best_step``; the
state goes into each checkpoint's run state. ``check_options`` parses and checks the setting at
start-up, so that ``--check_only`` refuses it too."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from ..async_convergence import AsyncConvergence, AsyncConvergenceConfig, AsyncConvergenceError, from_dict
from ..async_convergence.teachers import cpu_weights
from .trainer import Trainer

STATE_KEY = "async_convergence"
TASK = "nsp"
# the job's evaluation keys of the NSP task's metrics
EVALUATED = {"accuracy": "val_nsp_acc", "loss": "val_nsp_loss"}
TEACHER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def parse(value: Any) -> AsyncConvergenceConfig:
    """``--async_convergence``: a JSON object (text or a file holding one), checked against the job's task."""
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        if not os.path.isfile(value):
            raise AsyncConvergenceError(f"--async_convergence {value}: neither a JSON object nor a file")
        with open(value, encoding="utf-8") as f:
            value = f.read()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise AsyncConvergenceError(f"--async_convergence: not valid JSON ({err.msg} at line {err.lineno} "
                                        f"column {err.colno})") from None
    config = from_dict(value).check([TASK], {TASK: EVALUATED})
    if config.teacher != "frozen":
        raise AsyncConvergenceError("async_convergence: teacher: the pretraining job distils from a frozen copy "
                                    f"('frozen'); its batches carry no example index for {config.teacher!r}")
    return config


def check_options(options, ds_config: Mapping[str, Any]) -> Optional[AsyncConvergenceConfig]:
    """The parsed setting of ``options.async_convergence`` (None without it), refused in one line where
    the job cannot honour it."""
    value = getattr(options, "async_convergence", None)
    if value is None:
        return None
    if options.objective != "mlm+nsp":
        raise AsyncConvergenceError(f"--async_convergence distils the next-sentence task: it needs --objective "
                                    f"mlm+nsp, got {options.objective}")
    if options.eval_interval == 0:
        raise AsyncConvergenceError("--async_convergence watches the periodic evaluations: --eval_interval 0 has none")
    if int(ds_config.get("zero_optimization", {}).get("stage", 0)) >= 3:
        raise AsyncConvergenceError("--async_convergence copies the model's weights for its teacher: ZeRO stage 3 "
                                    "partitions them (use zero_optimization.stage 0-2)")
    return parse(value)


def nsp_logits(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The NSP logits of a BertForPreTraining (its encoder and NSP head only, no MLM head)."""
    pooled = model.bert(**{k: inputs[k] for k in TEACHER_INPUTS if k in inputs}).pooler_output
    return {TASK: model.cls.seq_relationship(pooled)}


def copier(module: torch.nn.Module):
    """Builds the teacher: a new model of ``module``'s class and config holding ``weights``. Its random
    initialisation draws from a forked CPU generator, so that the run's random stream (dropout, masks)
    is the same whether the teacher was built in this process or restored from a checkpoint."""
    def copy_model(weights):
        first = next(module.parameters())
        with torch.random.fork_rng(devices=[]):
            clone = type(module)(module.config)
        clone.load_state_dict(weights)
        return clone.to(device=first.device, dtype=first.dtype)
    return copy_model


def install(module: torch.nn.Module, convergence: AsyncConvergence, step) -> None:
    """Wrap ``module``'s forward: in training with NSP labels, the model's NSP cross-entropy in its loss
    is replaced by the NSP task's loss at optimizer step ``step()``."""
    inner = module.forward
    spec = convergence.config.task(TASK)

    def forward(*args, next_sentence_label=None, **kwargs):
        out = inner(*args, next_sentence_label=next_sentence_label, **kwargs)
        if next_sentence_label is None or not module.training or getattr(out, "loss", None) is None:
            return out
        now = step()
        if convergence.share(TASK, now) == 0 and spec.loss_weight == 1:
            return out
        logits = out.seq_relationship_logits
        own = F.cross_entropy(logits.view(-1, 2), next_sentence_label.view(-1))  # the model's NSP term
        task = convergence.task_loss(TASK, now, logits, next_sentence_label, kwargs)
        out["loss"] = out.loss - own + spec.loss_weight * task
        return out

    module.forward = forward


def attach(engine, config: AsyncConvergenceConfig) -> AsyncConvergence:
    """The job's ``AsyncConvergence`` for ``engine``'s model, its NSP loss wrapped (see ``install``)."""
    convergence = AsyncConvergence(config, nsp_logits, copier(engine.module))
    install(engine.module, convergence, lambda: engine.global_steps)
    return convergence


class TaskTelemetry:
    """The job's ``MetricsLogger``: each evaluation's NSP metrics feed the convergence rule (on every
    rank, before the record is written), and each record gets the task's state."""

    def __init__(self, inner, convergence: AsyncConvergence, module: torch.nn.Module):
        self.inner, self.convergence, self.module = inner, convergence, module

    def log(self, record: dict) -> None:
        step = record["step"]
        if record.get(EVALUATED["accuracy"]) is not None:
            metrics = {TASK: {name: record.get(key) for name, key in EVALUATED.items()}}
            self.convergence.observe(step, metrics, lambda: cpu_weights(self.module))
        for key, value in self.convergence.telemetry(step)[TASK].items():
            record[f"{TASK}/{key}"] = value
        self.inner.log(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class AsyncConvergenceLoop(Trainer):
    """The job's training loop with the task's state in every checkpoint (the run state's
    ``async_convergence``) and restored on resume."""

    def __init__(self, *args, convergence: AsyncConvergence, **kwargs):
        super().__init__(*args, **kwargs)
        self.convergence = convergence
        self.metrics = TaskTelemetry(self.metrics, convergence, self.engine.module)

    def run_state(self) -> dict:
        return dict(super().run_state(), **{STATE_KEY: self.convergence.state_dict()})

    def restore(self, state: dict) -> None:
        super().restore(state)
        if STATE_KEY not in state:
            raise AsyncConvergenceError("--async_convergence: the checkpoint was trained without it (no task state "
                                        "to continue); resume it without the flag, or start a new run")
        self.convergence.load_state_dict(state[STATE_KEY])
