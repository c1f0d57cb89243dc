"""SiftEngine: a DeepSpeed engine with the selection stage (``sift_ds.selection``) before each
training micro-step.

    gross batch --(selection core: early exit, top-k, row exchange)--> kept rows
                --> DeepSpeed forward / backward / step (ZeRO-sharded AdamW, grad accumulation)
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch
import torch.distributed as dist

from .adapters import EarlyExitAdapter
from .config import SiftConfig
from .config_io import AUTO
from . import selection
from .frontend import FrontEnd
from .schedule import resolve_selection_start, scheduler_warmup
from .selection import Selection
from .weighted_loss import weighted_output_loss

CRITERION_STATE_KEY = "sift_criterion"  # the criterion's state in a checkpoint's client state


class SiftEngine:
    """Wraps a ``DeepSpeedEngine``. Use ``train_step(gross_batch)``; ``select`` alone for inspection.

    ``sift_config`` is the SIFT configuration; every other attribute (``config``, ``save_checkpoint``,
    ``global_steps``, ``module``, ...) is the wrapped DeepSpeed engine's.
    """

    def __init__(self, engine, adapter: EarlyExitAdapter, sift_config: SiftConfig, labels_key: str = "labels"):
        self.engine = engine
        self.adapter = adapter
        if sift_config.selection_start_step == AUTO:  # an engine wrapped directly: its own scheduler's warm-up
            sift_config = resolve_selection_start(sift_config, *scheduler_warmup(getattr(engine, "lr_scheduler", None)))
        self.sift_config = sift_config
        self.micro_batch_size = engine.train_micro_batch_size_per_gpu()
        self.gross_batch_size = sift_config.gross_batch_size(self.micro_batch_size)
        self.group = getattr(engine, "data_parallel_group", None) if dist.is_initialized() else None
        self.world_size, self.rank = selection.data_parallel(self.group)
        self.frontend = FrontEnd(sift_config, torch.device(engine.device), lambda: self.group, adapter,
                                 labels_key=labels_key)
        self.telemetry = self.frontend.telemetry
        self.labels_key = labels_key

    # ------------------------------------------------------------------ pass-through
    def __getattr__(self, name: str) -> Any:
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    @property
    def selecting(self) -> bool:
        """Whether this optimizer step selects by score (not in the warm-up, nor after the annealing)."""
        return self.sift_config.selecting(self.engine.global_steps)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, save_dir, tag=None, client_state=None, **kwargs):
        """DeepSpeed's ``save_checkpoint`` (a collective), with the criterion's state (freq_loss's
        running baseline) added to ``client_state`` under ``CRITERION_STATE_KEY``."""
        state = {**(client_state or {}), CRITERION_STATE_KEY: self.frontend.criterion_state()}
        return self.engine.save_checkpoint(save_dir, tag=tag, client_state=state, **kwargs)

    def load_checkpoint(self, load_dir, tag=None, **kwargs):
        """DeepSpeed's ``load_checkpoint``; the criterion's state is restored with it, so that the
        resumed run scores and selects exactly as the uninterrupted run did."""
        path, client_state = self.engine.load_checkpoint(load_dir, tag, **kwargs)
        if client_state:
            self.frontend.load_criterion_state(client_state.get(CRITERION_STATE_KEY))
        return path, client_state

    # ------------------------------------------------------------------ selection
    def position(self) -> Tuple[int, int]:
        """The step source: (optimizer step, micro-step within it). DeepSpeed restores global_steps but
        not micro_steps on load; checkpoints are taken at accumulation boundaries, where micro_steps %
        gas is 0 either way, so resume stays exact."""
        return self.engine.global_steps, self.engine.micro_steps % self.engine.gradient_accumulation_steps()

    def select(self, batch: Mapping[str, torch.Tensor]) -> Selection:
        """Score this rank's gross batch with the early exit and keep the top rows (see SiftConfig and
        ``sift_ds.frontend.keep_count``). ``train_step`` records its ``sift/*`` pairs in ``telemetry``."""
        return self.frontend.select(batch, *self.position(), record=False)

    # ------------------------------------------------------------------ training
    def train_step(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """select -> forward -> backward -> step on one gross micro-batch; returns the (detached) loss.

        DeepSpeed applies the optimizer step at gradient-accumulation boundaries only.
        """
        timer = self.telemetry.timer
        t0 = timer.now()
        sel = self.select(batch)
        t1 = timer.now()
        output = self.engine(**sel.batch)
        loss = _loss_of(output) if sel.weights is None else weighted_output_loss(output, sel.batch, sel.weights,
                                                                                 self.labels_key)
        self.engine.backward(loss)
        self.engine.step()
        self.frontend.record(sel)
        self.telemetry.add_step(t0, t1, timer.now())
        return loss.detach()

    @property
    def stats(self) -> Dict[str, float]:
        """This rank's ``sift/*`` means of the ``train_step`` calls since the last ``read_stats`` (host
        values; reading them is the only sync they cost; no collective)."""
        return self.telemetry.means()

    def read_stats(self) -> Dict[str, float]:
        """The ``sift/*`` means of the ``train_step`` calls since the last call, pooled over every
        micro-step and data-parallel rank (``sift_ds.telemetry``; a collective: every rank calls it);
        the next window starts empty."""
        return self.telemetry.read(self.group)

    def probe(self, batch: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """The early-exit fidelity probe on ``batch`` (see ``sift_ds.probe``); a collective."""
        return self.frontend.probe(batch)


def _loss_of(output) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        loss = output[0]
    if loss is None:
        raise ValueError("the model returned no loss: the kept batch must carry the labels its forward needs")
    return loss
