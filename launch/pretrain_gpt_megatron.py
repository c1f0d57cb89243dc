#!/usr/bin/env python
"""Pretrain GPT with Megatron-LM and SIFT (sample sifting via early exiting): Megatron-LM's own
``pretrain_gpt.py`` layout, with two arguments of ``pretrain(...)`` wrapped by ``sift_ds.megatron``.

    torchrun --nproc_per_node 8 launch/pretrain_gpt_megatron.py <Megatron-LM's GPT arguments> \\
        --sift-criterion entropy --sift-exit-layer 2 --sift-keep-ratio 0.5

Selection starts at 30% of the learning-rate warm-up (``--lr-warmup-iters``, ``--lr-warmup-fraction`` or
``--lr-warmup-samples``; ``--sift-selection-start-step`` sets the iteration, before the peak). Needs
Megatron-LM (``megatron.training``) on the path and megatron-core; CUDA (Megatron's ``pretrain`` is
CUDA-only). Either entry point of Megatron-LM works: ``run_pretrain`` calls the
old ``pretrain(datasets_provider, model_provider, ...)`` (up to core_v0.17) or parses the arguments
first and calls ``pretrain(cfg_container, ...)`` (core_v0.18 on). ``--transformer-impl local`` or
``transformer_engine`` picks the layer spec; ``--mock-data`` trains on Megatron's ``MockGPTDataset``
(with ``--tokenizer-type NullTokenizer --vocab-size N``). The early exit scores Megatron's own
next-token targets: ``labels`` come already shifted and ``loss_mask`` marks the scored positions.
Add ``--no-create-attention-mask-in-dataloader`` at long sequences: the attention's causal mask is
then made in the kernel, and no ``[s, s]`` mask per row is broadcast. See docs/megatron.md.
"""
from functools import partial

import torch
from megatron.core import mpu, tensor_parallel
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_layer_local_spec,
                                                      get_gpt_layer_with_transformer_engine_spec)
from megatron.training import get_args, get_tokenizer, print_rank_0
from megatron.training.arguments import core_transformer_config_from_args
from megatron.training.utils import get_blend_and_blend_per_split

from sift_ds import SiftConfig
from sift_ds.megatron import Sift, run_pretrain


def model_provider(pre_process=True, post_process=True, vp_stage=None, config=None, pg_collection=None):
    """megatron-core GPTModel: the local layer spec or Transformer Engine's (``--transformer-impl``)."""
    args = get_args()
    config = config or core_transformer_config_from_args(args)
    spec_kwargs = dict(num_experts=args.num_experts, moe_grouped_gemm=args.moe_grouped_gemm,
                       qk_layernorm=args.qk_layernorm)
    if args.transformer_impl == "local":
        spec = get_gpt_layer_local_spec(normalization=args.normalization, **spec_kwargs)
    else:
        spec = get_gpt_layer_with_transformer_engine_spec(**spec_kwargs)
    return GPTModel(config=config, transformer_layer_spec=spec, vocab_size=args.padded_vocab_size,
                    max_sequence_length=args.max_position_embeddings, pre_process=pre_process,
                    post_process=post_process, parallel_output=True,
                    share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
                    position_embedding_type=args.position_embedding_type, rotary_percent=args.rotary_percent,
                    rotary_base=args.rotary_base, pg_collection=pg_collection, vp_stage=vp_stage)


def get_batch(data_iterator):
    """Megatron GPT's batch: TP rank 0 reads, ``broadcast_data`` sends it to the other TP ranks
    (one call per dtype). ``labels`` are the next tokens already; ``loss_mask`` marks the positions
    that count (0 at padding and, with ``--eod-mask-loss``, at end-of-document tokens)."""
    data = next(data_iterator) if data_iterator is not None else None
    ids = tensor_parallel.broadcast_data(["tokens", "labels", "position_ids"], data, torch.int64)
    loss_mask = tensor_parallel.broadcast_data(["loss_mask"], data, torch.float32)["loss_mask"]
    attention_mask = None
    if get_args().create_attention_mask_in_dataloader:
        attention_mask = tensor_parallel.broadcast_data(["attention_mask"], data, torch.bool)["attention_mask"]
    return ids["tokens"], ids["labels"], loss_mask, attention_mask, ids["position_ids"]


def loss_func(loss_mask, output_tensor):
    """Megatron-LM's GPT loss: (sum over the tokens, token count, {"lm loss": [sum, count]})."""
    losses = output_tensor.view(-1).float()
    loss = torch.sum(losses * loss_mask.view(-1).float())
    num_tokens = loss_mask.sum().clone().detach().to(torch.int)
    return loss, num_tokens, {"lm loss": torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])}


def forward_step(data_iterator, model):
    tokens, labels, loss_mask, attention_mask, position_ids = get_batch(data_iterator)
    output_tensor = model(tokens, position_ids, attention_mask, labels=labels)
    return output_tensor, partial(loss_func, loss_mask)


def dataset_config(args) -> GPTDatasetConfig:
    blend, blend_per_split = get_blend_and_blend_per_split(args)
    return GPTDatasetConfig(
        random_seed=args.seed, sequence_length=args.seq_length, blend=blend, blend_per_split=blend_per_split,
        split=args.split, path_to_cache=args.data_cache_path, tokenizer=get_tokenizer(),
        reset_position_ids=args.reset_position_ids, reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss, create_attention_mask=args.create_attention_mask_in_dataloader,
        mid_level_dataset_surplus=args.mid_level_dataset_surplus)


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
    args = get_args()
    print_rank_0("> building train, validation, and test datasets for GPT ...")
    dataset_class = MockGPTDataset if args.mock_data else GPTDataset
    return BlendedMegatronDatasetBuilder(dataset_class, train_val_test_num_samples,
                                         lambda: mpu.get_tensor_model_parallel_rank() == 0, dataset_config(args)).build()


def main(pretrain=None):
    """Megatron-LM's ``pretrain`` with SIFT's two wrappers (``pretrain``: another callable with its signature,
    e.g. the one ``inprocess_restart`` wraps; default ``megatron.training.pretrain``)."""
    train_valid_test_datasets_provider.is_distributed = True
    # The --sift-* flags are parsed by Megatron (inside pretrain, or before it from core_v0.18): the config
    # is read at its first use.
    sift = Sift(lambda: SiftConfig.from_megatron_args(get_args()))
    return run_pretrain(sift, train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder,
                        forward_step, args_defaults={"tokenizer_type": "GPT2BPETokenizer"}, pretrain=pretrain)


if __name__ == "__main__":
    main()
