"""``Sift``: SIFT for a Megatron-style script, adopted by wrapping two arguments of ``pretrain``.

    sift = Sift(SiftConfig(criterion="entropy", exit_layer=1, keep_ratio=0.5))
    pretrain(sift.datasets_provider(train_valid_test_datasets_provider), model_provider,
             ModelType.encoder_or_decoder, sift.forward_step(forward_step), extra_args_provider=add_arguments)

(Megatron-LM from core_v0.18 takes ``pretrain(cfg_container, ...)`` with the same two arguments
wrapped; ``entry.run_pretrain`` calls either form.) The early-exit adapter is found from the model's
class (``sift_ds.detect_adapter``: the registered families, megatron-core ``BertModel`` and ``GPTModel``
among them) and checked against the config when it is first resolved (the first training
micro-step), as the other front-ends check it (``sift_ds.frontend``). ``datasets_provider`` makes one
training item ``1 / keep_ratio`` samples (``datasets.py``);
``forward_step`` scores each gross micro-batch, keeps ``--micro-batch-size`` rows and hands them to
the script's own ``forward_step`` (``forward_step.py``). Selection starts at ``selection_start_step``,
resolved against Megatron-LM's learning-rate warm-up (``schedule.py``) when the datasets provider
runs. The selection itself (warm-up subsets, scores merged over the tensor-parallel vocabulary,
top-k or the config's knobs per rank or over the data-parallel group, the global row exchange) is
the shared core, ``sift_ds.selection``. Pipeline parallelism is refused (see ``check_parallelism``).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Union

import torch
from megatron.core import parallel_state

from ..adapters import detect_adapter
from ..config import SiftConfig
from ..criteria import criterion_scores
from ..schedule import resolve_selection_start
from ..versions import require
from ..frontend import FrontEnd, MicroSteps
from ..selection import Selection
from .datasets import gross_datasets_provider
from .forward_step import current_iteration, loss_dict_stats, num_microbatches, wrap_forward_step
from .schedule import lr_warmup_iterations, megatron_args


def gross_factor(config: SiftConfig) -> int:
    """Samples per gross item: ``1 / keep_ratio``, which must be whole (1 when SIFT is disabled)."""
    if not config.enabled:
        return 1
    factor = round(1.0 / float(config.keep_ratio))
    if abs(factor * float(config.keep_ratio) - 1.0) > 1e-6:
        raise ValueError(f"sift.keep_ratio={config.keep_ratio}: the Megatron drop-in stacks 1 / keep_ratio samples "
                         "into one training item, so 1 / keep_ratio must be a whole number (0.5, 0.25, 1/3, ...)")
    return factor


def data_parallel_group():
    """The data-parallel group; None without model parallelism (a single-process model)."""
    return parallel_state.get_data_parallel_group() if parallel_state.model_parallel_is_initialized() else None


class Sift:
    """The Megatron drop-in (see the module docstring).

    ``iteration``: a callable giving the current training iteration (the optimizer step that
    warm-up, annealing and the seeded random choices follow). Default: Megatron's
    ``args.curr_iteration``, or a DeepSpeed engine's ``global_steps`` (Megatron-DeepSpeed).
    ``adapter``: builds the early-exit adapter from the model (default ``sift_ds.detect_adapter``: the
    registered families, megatron-core's ``BertModel`` and ``GPTModel`` among them). ``sparse_mlm_head``:
    the wrapped ``forward_step`` gives a ``BertModel`` the masked-positions-only MLM head in training
    (``mlm_head.py``), SIFT on or off; False keeps the dense head.
    """

    def __init__(self, config: Union[SiftConfig, Callable[[], SiftConfig]],
                 iteration: Optional[Callable[[], int]] = None, adapter: Callable = detect_adapter,
                 sparse_mlm_head: bool = True):
        require(("megatron-core",), "sift_ds.megatron")
        self._config = config if isinstance(config, SiftConfig) else None
        self._config_source = config
        if self._config is not None:
            gross_factor(self.config)  # fail at construction, not at the first step
        self.iteration = iteration
        self.adapter_factory = adapter
        self.sparse_mlm_head = sparse_mlm_head
        self._frontend: Optional[FrontEnd] = None
        self._selection_config: Optional[SiftConfig] = None
        self._micro_steps = MicroSteps()

    @property
    def config(self) -> SiftConfig:
        """The SiftConfig; a callable given instead (e.g. ``lambda: SiftConfig.from_megatron_args(get_args())``,
        for flags that Megatron parses inside ``pretrain``) is called once, at the first use."""
        if self._config is None:
            config = self._config_source()
            if not isinstance(config, SiftConfig):
                raise TypeError(f"Sift's config callable returned {type(config).__name__}, not a SiftConfig")
            config.validate()
            self._config = config
        return self._config

    @property
    def selection_config(self) -> SiftConfig:
        """The config with ``selection_start_step`` resolved against Megatron-LM's learning-rate warm-up
        (``sift_ds.schedule``; "auto" is a share of it, a start at or after the peak is refused), at
        the first use in training: the datasets provider at start-up, or the first selection."""
        if self._selection_config is None:
            self._selection_config = resolve_selection_start(self.config, *lr_warmup_iterations(megatron_args()))
        return self._selection_config

    def start_up_checks(self) -> None:
        """What the wrapped datasets provider checks at start-up: parallelism, the selection start."""
        self.check_parallelism()
        self.selection_config  # noqa: B018 - resolved (and refused) now, not at the first step

    @property
    def frontend(self) -> FrontEnd:
        """The shared front-end (``sift_ds.frontend``), made at the first use of the config; the
        device is the model's, the group Megatron's data-parallel group."""
        if self._frontend is None:
            self._frontend = FrontEnd(self.config, group=data_parallel_group, detect=self.adapter_factory)
        return self._frontend

    @property
    def last(self) -> Optional[Selection]:
        """The last selection on this rank (for inspection and tests)."""
        return self._frontend.last if self._frontend is not None else None

    @property
    def factor(self) -> int:
        """Samples per gross training item (``1 / keep_ratio``)."""
        return gross_factor(self.config)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """What a checkpoint must carry for an exact resume besides Megatron's own state: the
        criterion's state (freq_loss's running baseline; None for the other criteria), the same on
        every rank. Megatron-LM's checkpoints do not hold it: save it with the model's."""
        return {"criterion": self.frontend.criterion_state()}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore ``state_dict``'s result, before or after the first training step."""
        self.frontend.load_criterion_state(state.get("criterion"))

    # ------------------------------------------------------------------ the two wrapped arguments
    def datasets_provider(self, provider: Callable) -> Callable:
        """``provider`` asked for 1/keep_ratio times the training samples; its training set stacked."""
        return gross_datasets_provider(provider, lambda: self.factor, self.start_up_checks)

    def forward_step(self, forward_step_func: Callable) -> Callable:
        """The script's ``forward_step``, run on the kept rows of each gross micro-batch in training."""
        return wrap_forward_step(self, forward_step_func)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def check_parallelism() -> None:
        """Refuse pipeline and context parallelism (at start-up: the datasets provider runs before training)."""
        if not parallel_state.model_parallel_is_initialized():
            return
        if parallel_state.get_context_parallel_world_size() > 1:
            raise ValueError("sift_ds.megatron does not support context parallelism: the early exit scores whole "
                             "sequences, and each context-parallel rank holds only a slice of them")
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            raise ValueError(
                "sift_ds.megatron does not support pipeline parallelism (pipeline-model-parallel size "
                f"{parallel_state.get_pipeline_model_parallel_world_size()}): the kept rows are chosen on the first "
                "stage, where the early exit runs, but the last stage needs them for the labels and loss mask, and a "
                "collective inside forward_step to send them would deadlock against the 1F1B schedule's order. "
                "Use tensor and data parallelism (--pipeline-model-parallel-size 1).")

    # ------------------------------------------------------------------ scoring and selection
    def adapter(self, model):
        """The early-exit adapter of ``model``, resolved and checked once (``FrontEnd.adapter_for``)."""
        return self.frontend.adapter_for(model)

    def scores(self, model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """float32 [b]: early-exit scores of a Megatron batch dict (every TP rank passes the same batch
        and gets identical scores; a collective over the TP group)."""
        adapter, cfg = self.adapter(model), self.config
        device = self.frontend.device_for(adapter)
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        return criterion_scores(adapter, cfg, batch, max_positions=0)

    def select(self, model, batch: Mapping[str, torch.Tensor], step: int, micro_step: int):
        """(the kept rows, their loss-dict telemetry) of a gross batch ``[gross, ...]`` that every TP
        rank holds; the telemetry window is the micro-step (Megatron reduces the loss dict itself)."""
        self.frontend.config = self.selection_config
        self.frontend.telemetry.clear()
        last = self.frontend.select(batch, step, micro_step, model=model)
        return last.batch, loss_dict_stats(self.frontend.telemetry.pairs, last.by_score, self.factor > 1)

    def probe(self, model, batch: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """The early-exit fidelity probe on a Megatron batch dict (``sift_ds.probe``): ``probe/spearman``
        and ``probe/top_half_overlap``; a collective over the data-parallel (and TP) group."""
        return self.frontend.probe(batch, model=model)

    def position(self, model) -> tuple:
        """(iteration, micro-step within it) of this forward_step call; a replayed iteration (Megatron's
        rerun machinery) gets the same micro-steps again."""
        step = int(self.iteration()) if self.iteration is not None else current_iteration(model)
        return step, self._micro_steps.next(step, num_microbatches())
