"""The pretraining loop around a ``SiftEngine``: steps, evaluation, logging, checkpoints, stopping.

Reusable outside ``launch/pretrain_bert.py``: give it an engine from ``sift_ds.initialize``, a
``GrossBatchLoader``, fixed validation batches, a ``MetricsLogger`` and a ``FlopsModel``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.distributed as dist

from .. import telemetry
from . import checkpoint
from .evaluation import evaluate
from .metrics import FlopsModel, MetricsLogger, mfu
from .stop_request import StopRequest
from .save_failure import checkpoint_failure
from .window import LogWindow, overhead

logger = logging.getLogger(__name__)


class NonFiniteLoss(ValueError):
    """A NaN / inf training or validation loss, or more than ``MAX_NONFINITE_SCORE_SHARE`` of a log
    window's selection scores non-finite: the run stops, writes no checkpoint, exports nothing."""


# Non-finite selection scores rank below every finite one; when more than this share of the rows a
# log window scored (all ranks) is non-finite, the selection is no longer by score and the run stops.
MAX_NONFINITE_SCORE_SHARE = 0.5


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
    probe_interval: int = 0  # >0: the fidelity probe every N steps (always at evaluations)
    peak_tflops: float = 312.0
    seq_len: int = 128


class Trainer:
    """Runs ``engine.train_step`` on gross batches until ``max_steps``, the time budget, the exit
    interval or a stop request (SIGTERM, SIGINT, the end of its launcher: ``stop_request``); logs,
    evaluates and checkpoints on the intervals of ``LoopOptions``.

    A stop before ``max_steps`` saves a checkpoint and evaluates nothing; the log window's partial
    sums go into the checkpoint, so the records of a resumed run are those of an uninterrupted one
    at any log interval. A non-finite training or validation loss raises ``NonFiniteLoss`` at the
    record that shows it (and before any checkpoint is written after it)."""

    def __init__(self, engine, loader, eval_batches, metrics: MetricsLogger, flops: FlopsModel,
                 options: LoopOptions, run_info: Optional[dict] = None):
        self.engine, self.loader, self.eval_batches = engine, loader, eval_batches
        self.metrics, self.flops, self.opts = metrics, flops, options
        self.run_info = dict(run_info or {})
        self.elapsed_s = 0.0  # training wall time, cumulative over resumes
        self.last_eval: Dict[str, float] = {}
        self.stop_reason: Optional[str] = None
        self._signal = StopRequest()
        self._gloo = None
        self._window: Optional[LogWindow] = None  # the log window being summed (restored by a resume)

    # ------------------------------------------------------------------ state
    @property
    def step(self) -> int:
        return self.engine.global_steps

    def run_state(self) -> dict:
        """What a checkpoint stores besides DeepSpeed's state (a collective: the log window is gathered)."""
        window = self._window.state(self.engine.telemetry.state()) if self._window is not None else None
        return dict(self.run_info, step=self.step, consumed_samples=self.step * self.engine.train_batch_size(),
                    gross_samples=self.loader.samples_seen, data=self.loader.state_dict(), elapsed_s=self.elapsed_s,
                    log_window=window)  # the criterion's state: SiftEngine.save_checkpoint

    def restore(self, state: dict) -> None:
        for key in ("seq_len", "objective"):
            if key in state and key in self.run_info and state[key] != self.run_info[key]:
                raise ValueError(f"--resume: the checkpoint was trained with {key}={state[key]!r}, this run has "
                                 f"{self.run_info[key]!r}")
        self.loader.load_state_dict(state["data"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        if state.get("log_window"):
            self._window = LogWindow.restored(self.engine.device, state["log_window"])
            self.engine.telemetry.load_state(self._window.sift_pairs)  # the sift/* window it cut
        self.engine.frontend.load_criterion_state(state.get("sift_criterion"))  # where older checkpoints kept it

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
        window = self._window = self._window or LogWindow(engine.device)
        loop_start = time.perf_counter() - self.elapsed_s
        try:
            while self.step < opts.max_steps and self.stop_reason is None:
                selecting = engine.selecting
                for _ in range(gas):
                    fetched = time.perf_counter()
                    batch = next(batches)
                    window.data_s += time.perf_counter() - fetched
                    window.add_loss(engine.train_step(batch))
                window.steps += 1
                window.flops += self.flops.step_flops(tokens_per_step, gross_tokens_per_step, selecting)
                step = self.step
                self.elapsed_s = time.perf_counter() - loop_start
                self.metrics.step(step)
                self.stop_reason = self._should_stop(step)
                end = step >= opts.max_steps
                do_eval = end or bool(opts.eval_interval and step % opts.eval_interval == 0)
                do_probe = engine.sift_config.enabled and (
                    do_eval or bool(opts.probe_interval and step % opts.probe_interval == 0))
                paused = time.perf_counter()  # evaluation, probe and checkpoint time is not training time
                if do_eval or do_probe or step % opts.log_interval == 0:
                    self._log(step, window, tokens_per_step, do_eval, do_probe)
                    window = self._window = LogWindow(engine.device)
                if end or self.stop_reason is not None or (opts.save_interval and step % opts.save_interval == 0):
                    saving = time.perf_counter()
                    self._check_finite(step, window)
                    self.save()
                    window.paused += time.perf_counter() - saving
                loop_start += time.perf_counter() - paused
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
            (self._signal.poll() is not None, "a stop request"),
        ]
        flags = [1.0 if cond else 0.0 for cond, _ in reasons]
        if dist.is_initialized():  # signals, launchers and the clock can differ between ranks
            t = torch.tensor(flags, dtype=torch.float32)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._stop_group())
            flags = t.tolist()
        # Polled again: a launcher that another rank of this node saw end has ended for this one too.
        texts = [text for _, text in reasons[:-1]] + [self._signal.poll() or "a stop request on another rank"]
        hit = [text for text, flag in zip(texts, flags) if flag]
        return ", ".join(hit) if hit and step < opts.max_steps else None

    def _stop_group(self):
        """A gloo group for the stop-flag all-reduce, so that it costs no device sync on GPU runs."""
        if self._gloo is None:
            self._gloo = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        return self._gloo

    def _log(self, step: int, window: "LogWindow", tokens_per_step: int, do_eval: bool, do_probe: bool) -> None:
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
            "mfu": mfu(window.flops, seconds, opts.peak_tflops, dist.get_world_size() if dist.is_initialized() else 1,
                       torch.device(engine.device).type),
        }
        if do_eval:
            self.last_eval = evaluate(engine, self.eval_batches)
            record.update(self.last_eval)
        sift_totals = engine.telemetry.totals(engine.group, reduce=True)  # the window's sift/*, every rank
        engine.telemetry.clear()
        record.update(telemetry.means(sift_totals))
        record.update(overhead(window, seconds, record.get("sift/selection_share"), engine))
        if do_probe:  # the early-exit fidelity probe on the first (fixed) validation batch
            record.update(engine.probe(self.eval_batches[0]))
        self.metrics.log(record)
        bad = [f"{name} {record[key]}" for key, name in (("train_loss", "training loss"), ("val_loss", "validation loss"))
               if record.get(key) is not None and not math.isfinite(record[key])]
        if bad:
            raise NonFiniteLoss(self._non_finite_message(step, " and ".join(bad)))
        self._check_scores(step, telemetry.nonfinite_share(sift_totals))

    def _check_scores(self, step: int, share: float) -> None:
        """Too many non-finite selection scores in the window, over all ranks (``share``), stop the run
        like a non-finite loss (``MAX_NONFINITE_SCORE_SHARE``)."""
        if share > MAX_NONFINITE_SCORE_SHARE:
            raise NonFiniteLoss(self._non_finite_message(
                step, f"selection scores ({share:.0%} of the rows scored since the last record, more "
                      f"than {MAX_NONFINITE_SCORE_SHARE:.0%}: the selection keeps rows it cannot rank)"))

    def _check_finite(self, step: int, window: "LogWindow") -> None:
        """Before a checkpoint: the steps since the last record had finite losses (a collective)."""
        if window.steps and not math.isfinite(window.mean_loss()):  # steps: the same on every rank
            raise NonFiniteLoss(self._non_finite_message(step, "training loss since the last record"))
        if window.steps:  # the engine's telemetry window is the log window (a collective)
            self._check_scores(step, telemetry.nonfinite_share(self.engine.telemetry.totals(self.engine.group, True)))

    def _non_finite_message(self, step: int, what: str) -> str:
        last = checkpoint.list_tags(self.opts.save_dir) if self.opts.save_dir else []
        where = f"; the last checkpoint is {self.opts.save_dir}/{last[-1]}" if last else ""
        return (f"non-finite {what} at step {step}: the run is stopped, nothing after it is saved or exported"
                f"{where} (lower the learning rate, check the data, or resume from an earlier checkpoint)")

    def save(self) -> Optional[str]:
        if not self.opts.save_dir:
            return None
        tag = f"{checkpoint.TAG_PREFIX}{self.engine.global_steps}"
        try:
            checkpoint.save(self.engine, self.opts.save_dir, self.run_state(), self.opts.keep_checkpoints or None,
                            run=self.run_info)
        except Exception as err:  # noqa: BLE001 - torch's stream writer, OSError, a peer's failure: one line
            raise checkpoint_failure(err, self.opts.save_dir, tag) from err
        self.metrics.info(f"saved checkpoint {self.opts.save_dir}/{tag}")
        return tag


def _current_lr(engine) -> Optional[float]:
    try:
        lrs = engine.get_lr()
    except Exception:  # noqa: BLE001 - no optimizer / scheduler
        return None
    return float(lrs[0]) if lrs else None
