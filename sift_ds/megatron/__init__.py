"""``sift_ds.megatron``: SIFT as a drop-in for Megatron-style scripts (megatron-core ``BertModel``).

    from sift_ds import SiftConfig
    from sift_ds.megatron import Sift, MCoreBertAdapter, add_arguments
    sift = Sift(SiftConfig(criterion="entropy", exit_layer=1, keep_ratio=0.5, warmup_steps=20000, scope="global"))
    pretrain(sift.datasets_provider(train_valid_test_datasets_provider), model_provider, ModelType.encoder_or_decoder,
             sift.forward_step(forward_step), extra_args_provider=add_arguments)

Modules: ``sift`` (``Sift``: the front-end over the shared selection core ``sift_ds.selection``),
``forward_step`` (the wrapped forward step, TP broadcast, telemetry in the loss dict), ``datasets``
(the gross training set), ``adapter`` (``MCoreBertAdapter``, with the adapter protocol's
tensor-parallel hooks), ``arguments`` (``--sift-*``). This subpackage needs megatron-core;
``import sift_ds`` alone never imports it. See docs/megatron.md.
"""
from .adapter import MCoreBertAdapter, unwrap_model
from .arguments import add_arguments
from .datasets import GrossDataset
from .sift import Sift

__all__ = ["GrossDataset", "MCoreBertAdapter", "Sift", "add_arguments", "unwrap_model"]
