#!/usr/bin/env python
"""Pretrain BERT with Megatron-LM and SIFT (sample sifting via early exiting): Megatron-LM's own
``pretrain_bert.py`` layout, with two arguments of ``pretrain(...)`` wrapped by ``sift_ds.megatron``.

    torchrun --nproc_per_node 8 launch/pretrain_bert_megatron.py <Megatron-LM's BERT arguments> \\
        --spec local --sift-criterion entropy --sift-exit-layer 1 --sift-keep-ratio 0.5

Selection starts at 30% of the learning-rate warm-up (``--lr-warmup-iters``, ``--lr-warmup-fraction`` or
``--lr-warmup-samples``; ``--sift-selection-start-step`` sets the iteration, before the peak). Needs
Megatron-LM (``megatron.training``) on the path and megatron-core; CUDA (Megatron's ``pretrain`` is
CUDA-only). ``--mock-data`` trains on random token blocks instead of an indexed
corpus (with ``--tokenizer-type NullTokenizer --vocab-size N``). Either entry point of Megatron-LM
works: ``run_pretrain`` calls the old ``pretrain(datasets_provider, model_provider, ...)`` (up to
core_v0.17) or parses the arguments first and calls ``pretrain(cfg_container, ...)`` (core_v0.18 on).
See docs/megatron.md.
"""
from functools import partial

import numpy as np
import torch
from megatron.core import mpu, tensor_parallel
from megatron.core.datasets.bert_dataset import BERTMaskedWordPieceDataset, BERTMaskedWordPieceDatasetConfig
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.utils import get_blend_from_list
from megatron.core.enums import ModelType
from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
from megatron.core.models.bert.bert_model import BertModel
from megatron.training import get_args, get_tokenizer, print_rank_0
from megatron.training.arguments import core_transformer_config_from_args
from megatron.training.utils import average_losses_across_data_parallel_group

from sift_ds import SiftConfig
from sift_ds.megatron import Sift, run_pretrain


def model_provider(pre_process=True, post_process=True, vp_stage=None, config=None, pg_collection=None):
    """megatron-core BertModel (local layer spec; Transformer Engine specs work the same way)."""
    args = get_args()
    config = config or core_transformer_config_from_args(args)
    return BertModel(config=config, transformer_layer_spec=bert_layer_local_spec, vocab_size=args.padded_vocab_size,
                     max_sequence_length=args.max_position_embeddings,
                     num_tokentypes=2 if args.bert_binary_head else 0, add_binary_head=args.bert_binary_head,
                     share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
                     parallel_output=True, pre_process=pre_process, post_process=post_process, vp_stage=vp_stage)


def get_batch(data_iterator):
    """Megatron BERT's batch: TP rank 0 reads, ``broadcast_data`` sends it to the other TP ranks."""
    keys = ["text", "types", "labels", "is_random", "loss_mask", "padding_mask"]
    data = next(data_iterator) if data_iterator is not None else None
    b = tensor_parallel.broadcast_data(keys, data, torch.int64)
    return (b["text"].long(), b["types"].long(), b["is_random"].long(), b["loss_mask"].float(),
            b["labels"].long(), b["padding_mask"].long())


def loss_func(loss_mask, sentence_order, output_tensor):
    lm_loss_, sop_logits = output_tensor
    lm_loss = torch.sum(lm_loss_.float().view(-1) * loss_mask.reshape(-1)) / loss_mask.sum()
    if sop_logits is None:
        return lm_loss, {"lm loss": average_losses_across_data_parallel_group([lm_loss])[0]}
    sop_loss = torch.nn.functional.cross_entropy(sop_logits.view(-1, 2).float(), sentence_order.view(-1),
                                                 ignore_index=-1)
    averaged = average_losses_across_data_parallel_group([lm_loss, sop_loss])
    return lm_loss + sop_loss, {"lm loss": averaged[0], "sop loss": averaged[1]}


def forward_step(data_iterator, model):
    tokens, types, sentence_order, loss_mask, lm_labels, padding_mask = get_batch(data_iterator)
    output_tensor = model(tokens, padding_mask, tokentype_ids=types if get_args().bert_binary_head else None,
                          lm_labels=lm_labels)
    return output_tensor, partial(loss_func, loss_mask, sentence_order)


class MockBertDataset(torch.utils.data.Dataset):
    """Random token blocks with 15% of the real tokens masked (``--mock-data``): Megatron BERT samples."""

    def __init__(self, num_samples, seq_length, vocab_size, seed):
        self.n, self.seq, self.vocab, self.seed = int(num_samples), seq_length, vocab_size, seed

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        rng = np.random.default_rng([self.seed, idx])
        length = int(rng.integers(self.seq // 2, self.seq + 1))
        padding = (np.arange(self.seq) < length).astype(np.int64)
        text = np.where(padding == 1, rng.integers(5, self.vocab, self.seq), 0).astype(np.int64)
        loss_mask = ((rng.random(self.seq) < 0.15) & (padding == 1)).astype(np.int64)
        labels = np.where(loss_mask == 1, text, -1).astype(np.int64)
        text = np.where(loss_mask == 1, 3, text)  # the [MASK] id of this toy vocabulary
        return {"text": text, "types": np.zeros(self.seq, np.int64), "labels": labels, "is_random": np.int64(0),
                "loss_mask": loss_mask, "padding_mask": padding, "truncated": np.int64(0)}


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
    args = get_args()
    if args.mock_data:
        return tuple(MockBertDataset(n, args.seq_length, args.padded_vocab_size, args.seed + i) if n else None
                     for i, n in enumerate(train_val_test_num_samples))
    config = BERTMaskedWordPieceDatasetConfig(
        random_seed=args.seed, sequence_length=args.seq_length, blend=get_blend_from_list(args.data_path),
        blend_per_split=[get_blend_from_list(args.train_data_path), get_blend_from_list(args.valid_data_path),
                         get_blend_from_list(args.test_data_path)],
        split=args.split, path_to_cache=args.data_cache_path, tokenizer=get_tokenizer(),
        masking_probability=args.mask_prob, short_sequence_probability=args.short_seq_prob, masking_max_ngram=3,
        masking_do_full_word=True, masking_do_permutation=False, masking_use_longer_ngrams=False,
        masking_use_geometric_distribution=False, classification_head=args.bert_binary_head)
    print_rank_0("> building train, validation, and test datasets for BERT ...")
    return BlendedMegatronDatasetBuilder(BERTMaskedWordPieceDataset, train_val_test_num_samples,
                                         lambda: mpu.get_tensor_model_parallel_rank() == 0, config).build()


def main(pretrain=None):
    """Megatron-LM's ``pretrain`` with SIFT's two wrappers (``pretrain``: another callable with its signature,
    e.g. the one ``inprocess_restart`` wraps; default ``megatron.training.pretrain``)."""
    train_valid_test_datasets_provider.is_distributed = True
    # The --sift-* flags are parsed by Megatron (inside pretrain, or before it from core_v0.18): the config
    # is read at its first use.
    sift = Sift(lambda: SiftConfig.from_megatron_args(get_args()))
    return run_pretrain(sift, train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder,
                        forward_step, args_defaults={"tokenizer_type": "BertWordPieceLowerCase"}, pretrain=pretrain)


if __name__ == "__main__":
    main()
