"""``Sift``: SIFT for a Megatron-style script, adopted by wrapping two arguments of ``pretrain``.

    sift = Sift(SiftConfig(criterion="entropy", exit_layer=1, keep_ratio=0.5, warmup_steps=480))
    pretrain(sift.datasets_provider(train_valid_test_datasets_provider), model_provider,
             ModelType.encoder_or_decoder, sift.forward_step(forward_step), extra_args_provider=add_arguments)

(Megatron-LM from core_v0.18 takes ``pretrain(cfg_container, ...)`` with the same two arguments
wrapped; ``entry.run_pretrain`` calls either form.) The early-exit adapter is found from the model's
class (``detect_adapter``: megatron-core ``BertModel`` or ``GPTModel``). ``datasets_provider`` makes one training item ``1 / keep_ratio`` samples (``datasets.py``);
``forward_step`` scores each gross micro-batch, keeps ``--micro-batch-size`` rows and hands them to
the script's own ``forward_step`` (``forward_step.py``). The selection itself (warm-up subsets,
scores merged over the tensor-parallel vocabulary, top-k or the config's knobs per rank or over the
data-parallel group, the global row exchange) is the shared core, ``sift_ds.selection``. Pipeline
parallelism is refused (see ``check_parallelism``).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Union

import torch
from megatron.core import parallel_state

from .. import selection
from ..config import SiftConfig
from ..criteria import sequence_scores
from ..selection import Selection
from ..batching import batch_rows
from .adapter import MCoreBertAdapter, unwrap_model
from .datasets import gross_datasets_provider
from .forward_step import current_iteration, num_microbatches, telemetry, wrap_forward_step
from .gpt_adapter import MCoreGPTAdapter

ADAPTERS = (MCoreBertAdapter, MCoreGPTAdapter)  # found by the model class they name (``model_class``)


def gross_factor(config: SiftConfig) -> int:
    """Samples per gross item: ``1 / keep_ratio``, which must be whole (1 when SIFT is disabled)."""
    if not config.enabled:
        return 1
    factor = round(1.0 / float(config.keep_ratio))
    if abs(factor * float(config.keep_ratio) - 1.0) > 1e-6:
        raise ValueError(f"sift.keep_ratio={config.keep_ratio}: the Megatron drop-in stacks 1 / keep_ratio samples "
                         "into one training item, so 1 / keep_ratio must be a whole number (0.5, 0.25, 1/3, ...)")
    return factor


def detect_adapter(model):
    """The built-in adapter for a megatron-core model (inside any ``.module`` wrappers), by its class."""
    inner = unwrap_model(model)
    for factory in ADAPTERS:
        if isinstance(inner, factory.model_class):
            return factory(model)
    raise TypeError(f"sift_ds.megatron has no built-in early-exit adapter for {type(inner).__name__} (built in: "
                    f"{', '.join(a.model_class.__name__ for a in ADAPTERS)}); pass Sift(config, adapter=...) an object "
                    "implementing sift_ds.EarlyExitAdapter with the tensor-parallel hooks (see MCoreAdapter)")


def data_parallel_group():
    """The data-parallel group; None without model parallelism (a single-process model)."""
    return parallel_state.get_data_parallel_group() if parallel_state.model_parallel_is_initialized() else None


class Sift:
    """The Megatron drop-in (see the module docstring).

    ``iteration``: a callable giving the current training iteration (the optimizer step that
    warm-up, annealing and the seeded random choices follow). Default: Megatron's
    ``args.curr_iteration``, or a DeepSpeed engine's ``global_steps`` (Megatron-DeepSpeed).
    ``adapter``: builds the early-exit adapter from the model (default ``detect_adapter``: megatron-core's
    ``BertModel`` or ``GPTModel``). ``sparse_mlm_head``: the wrapped ``forward_step`` gives a ``BertModel``
    the masked-positions-only MLM head in training (``mlm_head.py``), SIFT on or off; False keeps the dense head.
    """

    def __init__(self, config: Union[SiftConfig, Callable[[], SiftConfig]],
                 iteration: Optional[Callable[[], int]] = None, adapter: Callable = detect_adapter,
                 sparse_mlm_head: bool = True):
        self._config = config if isinstance(config, SiftConfig) else None
        self._config_source = config
        if self._config is not None:
            gross_factor(self.config)  # fail at construction, not at the first step
        self.iteration = iteration
        self.adapter_factory = adapter
        self.sparse_mlm_head = sparse_mlm_head
        self.last: Optional[Selection] = None  # the last selection on this rank (for inspection and tests)
        self._adapters: Dict[int, object] = {}
        self._micro = (None, 0)  # (iteration, forward_step calls in it)

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
    def factor(self) -> int:
        """Samples per gross training item (``1 / keep_ratio``)."""
        return gross_factor(self.config)

    # ------------------------------------------------------------------ the two wrapped arguments
    def datasets_provider(self, provider: Callable) -> Callable:
        """``provider`` asked for 1/keep_ratio times the training samples; its training set stacked."""
        return gross_datasets_provider(provider, lambda: self.factor, self.check_parallelism)

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
        key = id(model)
        if key not in self._adapters:
            self._adapters[key] = self.adapter_factory(model)
        return self._adapters[key]

    def scores(self, model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """float32 [b]: early-exit scores of a Megatron batch dict (every TP rank passes the same batch
        and gets identical scores; a collective over the TP group)."""
        adapter, cfg = self.adapter(model), self.config
        device = adapter.vocab_projection()[0].device
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        return sequence_scores(adapter, cfg, batch, max_positions=0)

    def select(self, model, batch: Mapping[str, torch.Tensor], step: int, micro_step: int):
        """(the kept rows, telemetry) of a gross batch ``[gross, ...]`` that every TP rank holds."""
        cfg, factor = self.config, self.factor
        gross = batch_rows(batch)
        if gross % factor:
            raise ValueError(f"a gross batch of {gross} rows is not a whole number of items of {factor} samples")
        adapter = self.adapter(model)
        self.last = selection.select(adapter, cfg, batch, step, micro_step, gross // factor, data_parallel_group(),
                                     device=adapter.vocab_projection()[0].device)
        last = self.last
        return last.batch, telemetry(last.scores, last.kept, last.by_score, last.keep_ratio, factor > 1)

    def position(self, model) -> tuple:
        """(iteration, micro-step within it) of this forward_step call; a replayed iteration (Megatron's
        rerun machinery) gets the same micro-steps again."""
        step = int(self.iteration()) if self.iteration is not None else current_iteration(model)
        last, count = self._micro
        count = count if step == last else 0
        self._micro = (step, count + 1)
        per_iteration = num_microbatches()
        return step, (count % per_iteration if per_iteration else count)
