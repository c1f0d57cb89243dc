"""``sift_ds.megatron``: SIFT as a drop-in for Megatron-style scripts (megatron-core ``BertModel`` and
``GPTModel``).

    from sift_ds import SiftConfig
    from sift_ds.megatron import Sift, add_arguments
    sift = Sift(SiftConfig(criterion="entropy", exit_layer=1, keep_ratio=0.5, scope="global"))  # selection from
    # 30% of --lr-warmup-iters (selection_start_step "auto"; a start at or after the LR peak is refused)
    # Megatron-LM up to core_v0.17:
    pretrain(sift.datasets_provider(train_valid_test_datasets_provider), model_provider, ModelType.encoder_or_decoder,
             sift.forward_step(forward_step), extra_args_provider=add_arguments)
    # from core_v0.18: parse_and_validate_args(extra_args_provider=add_arguments), then
    # pretrain(cfg_container, <the same two wrapped arguments>, ...); or, for either form,
    run_pretrain(sift, train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder, forward_step)

Modules: ``sift`` (``Sift``: the shim over the shared front-end ``sift_ds.frontend`` and selection
core ``sift_ds.selection``; ``detect_adapter`` is ``sift_ds.detect_adapter``), ``forward_step`` (the
wrapped forward step, TP broadcast, telemetry in the loss dict), ``datasets`` (the gross training set), ``adapter`` (``MCoreAdapter``, the adapter
protocol's tensor-parallel hooks, and ``MCoreBertAdapter``), ``gpt_adapter`` (``MCoreGPTAdapter``;
both register their families with the megatron-core class they serve),
``mlm_head`` (the masked-positions-only MLM head for ``BertModel``), ``arguments`` (``--sift-*``),
``entry`` (``run_pretrain``: either form of Megatron-LM's ``pretrain``), ``schedule`` (the learning-rate
warm-up of Megatron-LM's arguments, where selection starts).
This subpackage needs megatron-core; ``import sift_ds`` alone never imports it. See docs/megatron.md.
"""
from .adapter import MCoreAdapter, MCoreBertAdapter, unwrap_model
from .arguments import add_arguments
from .datasets import GrossDataset
from .entry import run_pretrain
from .gpt_adapter import MCoreGPTAdapter
from .mlm_head import apply_sparse_mlm_head
from .sift import Sift, detect_adapter

__all__ = ["GrossDataset", "MCoreAdapter", "MCoreBertAdapter", "MCoreGPTAdapter", "Sift", "add_arguments",
           "apply_sparse_mlm_head", "detect_adapter", "run_pretrain", "unwrap_model"]
