"""The front-end contract: what every front-end (DeepSpeed ``SiftEngine``, ``sift_ds.hf.SiftTrainer``,
``sift_ds.megatron.Sift``) takes from the core, so that the three behave the same. A front-end is a
short shim that reads its framework's batch, step counters and devices and hands them to one
``FrontEnd``, which owns:

* **adapter resolution**: the adapter given, or the registered one for the model (``detect``:
  ``sift_ds.detect_adapter`` by default), resolved once per model;
* **start-up validation**: ``start_up_checks``, one-line ValueErrors naming the key (the exit layer
  against the model's depth, the kernel against the device, the gross batch against the micro-batch);
* **the step source**: ``select`` takes the ``(step, micro_step)`` position that the random choices
  follow; each front-end reads it from its own counters (the optimizer step, the micro-step within it),
  or counts the micro-steps with ``MicroSteps`` where its framework does not say;
* **the keep rule**: ``keep_count``, the one rule for how many rows of a gross batch are kept;
* **telemetry**: every selection's ``sift/*`` pairs go to ``telemetry`` (``sift_ds.telemetry``),
  which the front-end reads, over all ranks, at its own logging window;
* **the criterion state**: ``criterion_state`` / ``load_criterion_state`` (freq_loss's running
  baseline), which each front-end puts into its own checkpoints;
* **the fidelity probe**: ``probe`` (``sift_ds.probe.fidelity``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from . import criteria, kernels, probe, selection
from .adapters import EarlyExitAdapter, detect_adapter
from .batching import batch_rows
from .config import SiftConfig
from .selection import Selection
from .telemetry import SelectionTelemetry

MICRO_BATCH_KEY = "train_micro_batch_size_per_gpu"  # DeepSpeed's name for the kept rows per rank and micro-step


def keep_count(config: SiftConfig, rows: int) -> int:
    """The keep rule: of a gross batch of ``rows`` rows, SIFT keeps ``round(rows * keep_ratio)`` (at
    least 1); with SIFT disabled, every row. A full gross batch (``micro_batch / keep_ratio`` rows)
    keeps exactly the micro-batch; a short one (the last of an epoch) keeps its share."""
    if not config.enabled:
        return rows
    return max(1, round(rows * float(config.keep_ratio)))


def check_kernel(config: SiftConfig, device: torch.device) -> None:
    """The configured scorer backend can run on ``device`` (a ValueError naming ``sift.kernel``)."""
    try:
        kernels.resolve_backend(config.kernel, torch.device(device))
    except RuntimeError as err:
        raise ValueError(f"sift.kernel={config.kernel!r} cannot run here: {err}") from None


def start_up_checks(config: SiftConfig, adapter: Optional[EarlyExitAdapter] = None,
                    device: Optional[torch.device] = None, micro_batch: Optional[int] = None,
                    micro_key: str = MICRO_BATCH_KEY) -> None:
    """What a front-end checks before training, each a one-line ValueError naming the key: with SIFT
    enabled, ``exit_layer`` within the adapter's depth and the criterion serving its kind of model; a
    whole gross batch for ``micro_batch`` (named ``micro_key``, the front-end's own flag); with SIFT
    enabled, the kernel runnable on ``device``."""
    if config.enabled and adapter is not None:
        config.validate_for_model(adapter.num_layers)
        criteria.check_model(adapter, config)
    if micro_batch is not None:
        config.gross_batch_size(micro_batch, micro_key)
    if config.enabled and device is not None:
        check_kernel(config, device)


class MicroSteps:
    """A step source's micro-step counter, for a framework that calls the front-end once per
    micro-step without saying which (Megatron's ``forward_step``): the calls within one step are
    micro-steps 0, 1, ..., modulo ``per_step`` when known, so that a replayed step (Megatron's
    rerun machinery) gets the same micro-steps again."""

    def __init__(self):
        self._last: Tuple[Optional[int], int] = (None, 0)  # (step, calls in it)

    def next(self, step: int, per_step: Optional[int] = None) -> int:
        last, count = self._last
        count = count if step == last else 0
        self._last = (step, count + 1)
        return count % per_step if per_step else count


class FrontEnd:
    """The shared part of a front-end (module docstring).

    ``device``: where batches go (None: where the adapter's vocabulary projection lives, as for a
    megatron-core model); ``group``: a callable giving the data-parallel group (read at each
    selection: a framework may set it up after the front-end is made); ``adapter``: the adapter to
    use for every model, else ``detect(model)``; ``labels_key``: the batch key of the targets.
    """

    def __init__(self, config: SiftConfig, device: Optional[torch.device] = None,
                 group: Callable[[], Any] = lambda: None, adapter: Optional[EarlyExitAdapter] = None,
                 detect: Callable[[Any], EarlyExitAdapter] = detect_adapter, labels_key: str = "labels"):
        self.config, self.device, self.group, self.labels_key = config, device, group, labels_key
        self.given_adapter, self.detect = adapter, detect
        self._adapters: Dict[int, EarlyExitAdapter] = {}
        self._pending_state: Optional[dict] = None  # criterion state loaded before the adapter was known
        start_up_checks(config, adapter, device)
        self.telemetry = SelectionTelemetry(torch.device(device) if device is not None else torch.device("cpu"))
        self.last: Optional[Selection] = None  # the last selection (for inspection and tests)

    # ------------------------------------------------------------------ adapter resolution
    def adapter_for(self, model=None) -> EarlyExitAdapter:
        """The given adapter, or the one detected for ``model`` (once per model, checked at once)."""
        if self.given_adapter is not None:
            return self.given_adapter
        if model is None:
            raise ValueError("no model to find the early-exit adapter for: pass adapter=")
        key = id(model)
        if key not in self._adapters:
            adapter = self.detect(model)
            start_up_checks(self.config, adapter, self.device if self.device is not None else weight_device(adapter))
            if self.device is None:
                self.telemetry.to(weight_device(adapter))  # timed where the model runs
            self._adapters = {key: adapter}  # a new model (model_init, a new wrapper) replaces the old one
            if self._pending_state is not None:
                state, self._pending_state = self._pending_state, None
                criteria.load_state_dict(adapter, self.config, state, self.device_for(adapter))
        return self._adapters[key]

    def device_for(self, adapter: EarlyExitAdapter) -> torch.device:
        return torch.device(self.device) if self.device is not None else weight_device(adapter)

    # ------------------------------------------------------------------ criterion state
    def _known_adapter(self, model=None) -> Optional[EarlyExitAdapter]:
        if self.given_adapter is not None or model is not None:
            return self.adapter_for(model)
        return next(iter(self._adapters.values()), None)

    def criterion_state(self, model=None) -> Optional[dict]:
        """The criterion's state for a checkpoint (freq_loss's running baseline; None for a criterion
        that keeps none, or before the first selection): the same on every rank."""
        adapter = self._known_adapter(model)
        return criteria.state_dict(adapter) if adapter is not None else self._pending_state

    def load_criterion_state(self, state: Optional[Mapping], model=None) -> None:
        """Restore ``criterion_state``'s result (None restores nothing). Before the adapter is known
        (a model first seen in training) the state is kept and restored when it is resolved."""
        if state is None:
            return
        adapter = self._known_adapter(model)
        if adapter is None:
            self._pending_state = dict(state)
        else:
            criteria.load_state_dict(adapter, self.config, state, self.device_for(adapter))

    # ------------------------------------------------------------------ selection
    def keep(self, rows: int) -> int:
        """Rows kept of a gross batch of ``rows`` (``keep_count``)."""
        return keep_count(self.config, rows)

    def select(self, batch: Mapping[str, torch.Tensor], step: int, micro_step: int, model=None,
               record: bool = True) -> Selection:
        """The shared core's selection of one gross batch at ``(step, micro_step)``; with ``record``,
        its ``sift/*`` pairs are added to ``telemetry`` (else the caller ``record``s it when it chooses)."""
        adapter = self.adapter_for(model)
        self.last = selection.select(adapter, self.config, batch, step, micro_step, self.keep(batch_rows(batch)),
                                     self.group(), device=self.device_for(adapter), labels_key=self.labels_key)
        if record:
            self.record(self.last)
        return self.last

    def record(self, selection_done: Selection) -> None:
        """Add a selection's ``sift/*`` pairs to ``telemetry`` (device tensors: no host sync)."""
        self.telemetry.add(selection_done.stats())

    def probe(self, batch: Mapping[str, torch.Tensor], model=None) -> Dict[str, float]:
        """The early-exit fidelity probe on ``batch`` (``sift_ds.probe.fidelity``): ``probe/spearman``
        and ``probe/top_half_overlap``; a collective over the data-parallel group."""
        adapter = self.adapter_for(model)
        device = self.device_for(adapter)
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        return probe.fidelity(adapter, batch, self.config, self.labels_key, self.group())


def weight_device(adapter: EarlyExitAdapter) -> torch.device:
    """Where the adapter's vocabulary projection (and so the scoring) lives."""
    return adapter.vocab_projection()[0].device
