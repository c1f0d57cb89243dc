"""The pretraining loop around a ``SiftEngine``: steps, evaluation, logging, checkpoints, stopping.

Reusable outside ``launch/pretrain_bert.py``: give it an engine from ``sift_ds.initialize``, a
``GrossBatchLoader``, fixed validation batches, a ``MetricsLogger`` and a ``FlopsModel``.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import checkpoint
from .metrics import FlopsModel, MetricsLogger, mfu

logger = logging.getLogger(__name__)


@dataclass
class LoopOptions:
    max_steps: int
    log_interval: int = 10
    eval_interval: int = 100  # 0: no periodic evaluation (the final one still runs)
    save_interval: int = 1000  # 0: no periodic checkpoint (the final one still runs)
    exit_interval: int = 0  # >0: save and exit after a step divisible by it (Megatron's --exit-interval)
    time_budget_s: float = 0.0  # >0: save and stop once the cumulative training wall time reaches it
    save_dir: Optional[str] = None
    keep_checkpoints: int = 0  # >0: keep only the newest N checkpoints
    peak_tflops: float = 312.0
    seq_len: int = 128


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _all_reduce_sum(values: List[float], device) -> List[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(engine, batches: List[Dict[str, torch.Tensor]]) -> Dict[str, float]:
    """Masked-LM loss and accuracy (and NSP accuracy when the batches carry NSP labels) over this
    rank's fixed validation batches, summed over all ranks."""
    module = engine.module
    was_training = module.training
    module.eval()
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # mlm loss, mlm correct, mlm count, nsp correct, nsp count
    try:
        for batch in batches:
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            labels, nsp_labels = batch.pop("labels"), batch.pop("next_sentence_label", None)
            out = engine(**batch)
            logits = getattr(out, "prediction_logits", None)
            logits = out.logits if logits is None else logits
            mask = labels != -100
            picked, targets = logits[mask].float(), labels[mask]
            sums[0] += F.cross_entropy(picked, targets, reduction="sum").item()
            sums[1] += (picked.argmax(-1) == targets).sum().item()
            sums[2] += mask.sum().item()
            if nsp_labels is not None:
                valid = nsp_labels != -100
                sums[3] += (out.seq_relationship_logits.argmax(-1) == nsp_labels)[valid].sum().item()
                sums[4] += valid.sum().item()
    finally:
        module.train(was_training)
    loss, correct, count, nsp_correct, nsp_count = _all_reduce_sum(sums, engine.device)
    result = {"val_loss": loss / max(count, 1.0), "val_acc": correct / max(count, 1.0)}
    if nsp_count:
        result["val_nsp_acc"] = nsp_correct / nsp_count
    return result


class _StopSignal:
    """SIGTERM (Slurm pre-emption, the DeepSpeed launcher's shutdown) asks for a checkpoint and a
    clean exit at the next step boundary instead of killing the step."""

    def __init__(self):
        self.received = False
        self._previous = None

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.received = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    """Runs ``engine.train_step`` on gross batches until ``max_steps``, the time budget, the exit
    interval or SIGTERM; logs, evaluates and checkpoints on the intervals of ``LoopOptions``."""

    def __init__(self, engine, loader, eval_batches, metrics: MetricsLogger, flops: FlopsModel,
                 options: LoopOptions, run_info: Optional[dict] = None):
        self.engine, self.loader, self.eval_batches = engine, loader, eval_batches
        self.metrics, self.flops, self.opts = metrics, flops, options
        self.run_info = dict(run_info or {})
        self.elapsed_s = 0.0  # training wall time, cumulative over resumes
        self.last_eval: Dict[str, float] = {}
        self.stop_reason: Optional[str] = None
        self._signal = _StopSignal()
        self._gloo = None

    # ------------------------------------------------------------------ state
    @property
    def step(self) -> int:
        return self.engine.global_steps

    def run_state(self) -> dict:
        return dict(self.run_info, step=self.step, consumed_samples=self.step * self.engine.train_batch_size(),
                    gross_samples=self.loader.samples_seen, data=self.loader.state_dict(), elapsed_s=self.elapsed_s)

    def restore(self, state: dict) -> None:
        for key in ("seq_len", "objective"):
            if key in state and key in self.run_info and state[key] != self.run_info[key]:
                raise ValueError(f"--resume: the checkpoint was trained with {key}={state[key]!r}, this run has "
                                 f"{self.run_info[key]!r}")
        self.loader.load_state_dict(state["data"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))

    # ------------------------------------------------------------------ loop
    def train(self) -> Dict[str, float]:
        opts, engine = self.opts, self.engine
        if opts.time_budget_s and self.elapsed_s >= opts.time_budget_s:
            logger.info("the time budget (%g min) was spent before this resume: nothing to do", opts.time_budget_s / 60)
            self.metrics.close()
            return self.last_eval
        gas = engine.gradient_accumulation_steps()
        tokens_per_step = engine.train_batch_size() * opts.seq_len
        gross_tokens_per_step = self.loader.global_batch * gas * opts.seq_len
        batches = iter(self.loader)
        self._signal.install()
        window = _Window(engine.device)
        loop_start = time.perf_counter() - self.elapsed_s
        try:
            while self.step < opts.max_steps and self.stop_reason is None:
                selecting = engine.config.enabled and not engine.in_warmup
                for _ in range(gas):
                    window.add_loss(engine.train_step(next(batches)))
                window.steps += 1
                window.flops += self.flops.step_flops(tokens_per_step, gross_tokens_per_step, selecting)
                step = self.step
                self.elapsed_s = time.perf_counter() - loop_start
                self.metrics.step(step)
                self.stop_reason = self._should_stop(step)
                final = step >= opts.max_steps or self.stop_reason is not None
                do_eval = final or bool(opts.eval_interval and step % opts.eval_interval == 0)
                if do_eval or step % opts.log_interval == 0:
                    self._log(step, window, tokens_per_step, do_eval)
                    window = _Window(engine.device)
                if final or (opts.save_interval and step % opts.save_interval == 0):
                    paused = time.perf_counter()
                    self.save()
                    window.paused += time.perf_counter() - paused
        finally:
            self._signal.restore()
            self.metrics.close()
        if self.stop_reason:
            logger.info("stopped at step %d: %s", self.step, self.stop_reason)
        return self.last_eval

    def _should_stop(self, step: int) -> Optional[str]:
        """The same decision on every rank: local reasons are OR-ed with an all-reduce."""
        opts = self.opts
        reasons = [
            (opts.exit_interval and step % opts.exit_interval == 0, f"exit interval ({opts.exit_interval} steps)"),
            (opts.time_budget_s and self.elapsed_s >= opts.time_budget_s,
             f"time budget ({opts.time_budget_s / 60:g} min)"),
            (self._signal.received, "SIGTERM"),
        ]
        flags = [1.0 if cond else 0.0 for cond, _ in reasons]
        if dist.is_initialized():  # SIGTERM and the clock can differ between ranks
            t = torch.tensor(flags, dtype=torch.float32)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._stop_group())
            flags = t.tolist()
        hit = [text for (_, text), flag in zip(reasons, flags) if flag]
        return ", ".join(hit) if hit and step < opts.max_steps else None

    def _stop_group(self):
        """A gloo group for the stop-flag all-reduce, so that it costs no device sync on GPU runs."""
        if self._gloo is None:
            self._gloo = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        return self._gloo

    def _log(self, step: int, window: "_Window", tokens_per_step: int, do_eval: bool) -> None:
        engine, opts = self.engine, self.opts
        train_loss = window.mean_loss()  # all-reduced: also the sync point for the timing
        seconds = window.seconds()
        record = {
            "step": step,
            "max_steps": opts.max_steps,
            "time": time.time(),
            "elapsed_s": self.elapsed_s,
            "samples": step * engine.train_batch_size(),
            "gross_samples": self.loader.samples_seen,
            "epoch": self.loader.epoch,
            "lr": _current_lr(engine),
            "train_loss": train_loss,
            "val_loss": None,
            "val_acc": None,
            "tokens_per_s": window.steps * tokens_per_step / seconds if seconds > 0 else 0.0,
            "mfu": mfu(window.flops, seconds, opts.peak_tflops, _world()),
        }
        if do_eval:
            self.last_eval = evaluate(engine, self.eval_batches)
            record.update(self.last_eval)
        record.update(engine.stats)
        self.metrics.log(record)

    def save(self) -> Optional[str]:
        if not self.opts.save_dir:
            return None
        tag = checkpoint.save(self.engine, self.opts.save_dir, self.run_state(), self.opts.keep_checkpoints or None)
        self.metrics.info(f"saved checkpoint {self.opts.save_dir}/{tag}")
        return tag


def _current_lr(engine) -> Optional[float]:
    try:
        lrs = engine.get_lr()
    except Exception:  # noqa: BLE001 - no optimizer / scheduler
        return None
    return float(lrs[0]) if lrs else None


class _Window:
    """Loss sum and wall time between two log records (evaluation and checkpoint time excluded)."""

    def __init__(self, device):
        self.start = time.perf_counter()
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.micro_steps = 0
        self.steps = 0
        self.flops = 0.0
        self.paused = 0.0

    def add_loss(self, loss: torch.Tensor) -> None:
        self.loss += loss.detach().to(torch.float64)
        self.micro_steps += 1

    def mean_loss(self) -> float:
        total = torch.stack([self.loss, torch.tensor(float(self.micro_steps), dtype=torch.float64,
                                                     device=self.loss.device)])
        if dist.is_initialized():
            dist.all_reduce(total)
        return (total[0] / total[1].clamp(min=1)).item()

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused
