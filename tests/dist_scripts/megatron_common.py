"""Shared by the Megatron test scripts: real megatron-core BertModel and GPTModel on the CPU (gloo),
Megatron BERT and GPT batches, and Megatron-LM-style forward_step / loss_func.

Two spots of megatron-core assume CUDA and are patched here, for the tests only:
``GlobalMemoryBuffer.get_tensor`` allocates on the current CUDA device, and
``CudaRNGStatesTracker.fork`` (reached from the attention's dropout) swaps CUDA RNG states.
A sequence-parallel model (:func:`build_bert_sp`) needs two more: the sequence-parallel gathers and
scatters of ``tensor_parallel.mappings`` allocate on ``torch.cuda.current_device()``, and the local
spec's ``WrappedTorchNorm`` refuses sequence parallelism (on a GPU, Apex / Transformer Engine norms
carry it; the forward arithmetic of a LayerNorm is the same either way). A GPTModel with RoPE
(:func:`build_gpt`) needs the first of those: the rotary embedding moves its frequencies to
``torch.cuda.current_device()``.
"""
import contextlib
import dataclasses
import os
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core import utils as mcore_utils
from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
from megatron.core.models.bert.bert_model import BertModel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import random as mcore_random
from megatron.core.transformer import torch_norm
from megatron.core.transformer.transformer_config import TransformerConfig

VOCAB, SEQ, HIDDEN, HEADS, LAYERS = 128, 16, 32, 4, 3


def _cpu_buffer(self, tensor_shape, dtype, name, mem_alloc_context=None):
    return torch.empty(*tensor_shape, dtype=dtype)


def patch_cuda_spots():
    mcore_utils.GlobalMemoryBuffer.get_tensor = _cpu_buffer
    mcore_random.CudaRNGStatesTracker.fork = lambda self, name=None: contextlib.nullcontext()


def init(tp=1, pp=1):
    patch_cuda_spots()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)


def transformer_config(layers, sequence_parallel=False, dropout=0.1):
    return TransformerConfig(num_layers=layers, hidden_size=HIDDEN, num_attention_heads=HEADS,
                             use_cpu_initialization=True, hidden_dropout=dropout, attention_dropout=dropout,
                             tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
                             sequence_parallel=sequence_parallel, params_dtype=torch.float32)


def build_gpt(seed=0, layers=LAYERS, tied=False, rope=True, dropout=0.1):
    """A megatron-core GPTModel (local spec): untied output layer and RoPE, or tied and learned positions."""
    if rope:
        torch.cuda.current_device = lambda: "cpu"
    torch.manual_seed(seed)  # the same full weights on every rank; each TP rank keeps its shard
    return GPTModel(transformer_config(layers, dropout=dropout), transformer_layer_spec=get_gpt_layer_local_spec(),
                    vocab_size=VOCAB, max_sequence_length=SEQ, share_embeddings_and_output_weights=tied,
                    position_embedding_type="rope" if rope else "learned_absolute")


def build_bert(seed=0, layers=LAYERS, sequence_parallel=False, dropout=0.1):
    torch.manual_seed(seed)  # the same full weights on every rank; each TP rank keeps its shard
    cfg = transformer_config(layers, sequence_parallel, dropout)
    return BertModel(cfg, num_tokentypes=2, transformer_layer_spec=bert_layer_local_spec, vocab_size=VOCAB,
                     max_sequence_length=SEQ, share_embeddings_and_output_weights=True, add_binary_head=False)


def _norm_without_sequence_parallel(new):
    def make(cls, config, hidden_size, eps=1e-5, **kwargs):
        return new(cls, dataclasses.replace(config, sequence_parallel=False), hidden_size, eps, **kwargs)
    return make


def build_bert_sp(seed=0, layers=LAYERS, dropout=0.1):
    """``build_bert`` with sequence parallelism (hidden states ``[s/tp, b, h]`` between layers): the
    same weights as ``build_bert(seed)``."""
    torch.cuda.current_device = lambda: "cpu"
    if not getattr(torch_norm.WrappedTorchNorm.__new__, "patched", False):
        torch_norm.WrappedTorchNorm.__new__ = _norm_without_sequence_parallel(torch_norm.WrappedTorchNorm.__new__)
        torch_norm.WrappedTorchNorm.__new__.patched = True
    return build_bert(seed=seed, layers=layers, sequence_parallel=True, dropout=dropout)


def sample(rng, seq=SEQ, vocab=VOCAB, empty=False):
    """One Megatron BERT sample (numpy, int64): unmasked positions have label -1 and loss_mask 0."""
    length = int(rng.integers(seq // 2, seq + 1))
    text = np.zeros(seq, np.int64)
    text[:length] = rng.integers(4, vocab, length)
    padding = (np.arange(seq) < length).astype(np.int64)
    loss_mask = ((rng.random(seq) < 0.3) & (padding == 1)).astype(np.int64)
    if not empty and loss_mask.sum() == 0:
        loss_mask[0] = 1
    if empty:
        loss_mask[:] = 0
    labels = np.where(loss_mask == 1, rng.integers(4, vocab, seq), -1).astype(np.int64)
    types = (np.arange(seq) >= length // 2).astype(np.int64) * padding
    return {"text": text, "types": types, "labels": labels, "is_random": np.int64(0), "loss_mask": loss_mask,
            "padding_mask": padding, "truncated": np.int64(0)}


def gpt_sample(rng, seq=SEQ, vocab=VOCAB, empty=False):
    """One Megatron GPTDataset sample (numpy): ``tokens`` and the already-shifted ``labels`` from one
    text of seq + 1 ids, right padding with loss_mask 0, the dataset's causal attention_mask
    (True = masked out) and position_ids."""
    length = int(rng.integers(seq // 2, seq + 1))
    text = np.zeros(seq + 1, np.int64)
    text[:length + 1] = rng.integers(4, vocab, length + 1)
    loss_mask = (np.arange(seq) < (0 if empty else length)).astype(np.float32)
    causal = np.tril(np.ones((1, seq, seq), np.float32)) < 0.5
    return {"tokens": text[:-1], "labels": text[1:], "loss_mask": loss_mask, "attention_mask": causal,
            "position_ids": np.arange(seq, dtype=np.int64)}


def gpt_samples(n, seed, empty_every=0):
    rng = np.random.default_rng(seed)
    return [gpt_sample(rng, empty=bool(empty_every) and i % empty_every == empty_every - 1) for i in range(n)]


def samples(n, seed, empty_every=0):
    rng = np.random.default_rng(seed)
    return [sample(rng, empty=bool(empty_every) and i % empty_every == empty_every - 1) for i in range(n)]


def collate(items):
    return {k: torch.as_tensor(np.stack([it[k] for it in items])) for k in items[0]}


def loss_func(loss_mask, output_tensor):
    """Megatron-LM pretrain_bert's loss_func without the binary head."""
    lm_loss_, _ = output_tensor
    mask = loss_mask.float()
    loss = torch.sum(lm_loss_.float().view(-1) * mask.reshape(-1)) / mask.sum()
    return loss, {"lm loss": loss.detach().clone().view(1)}


SEEN = []  # the (iterator, batch) each forward_step call got, for the tests


def forward_step(data_iterator, model):
    """Megatron-LM pretrain_bert's forward_step (its get_batch minus the CUDA broadcast)."""
    batch = next(data_iterator)
    SEEN.append((data_iterator, batch))
    output = model(batch["text"], batch["padding_mask"], tokentype_ids=batch["types"], lm_labels=batch["labels"])
    return output, partial(loss_func, batch["loss_mask"])


def gpt_loss_func(loss_mask, output_tensor):
    """Megatron-LM pretrain_gpt's loss_func: (loss sum, token count, {"lm loss": [sum, count]})."""
    losses, mask = output_tensor.view(-1).float(), loss_mask.view(-1).float()
    loss = torch.sum(losses * mask)
    count = mask.sum().clone().detach().to(torch.int)
    return loss, count, {"lm loss": torch.cat([loss.clone().detach().view(1), count.view(1)])}


def gpt_forward_step(data_iterator, model):
    """Megatron-LM pretrain_gpt's forward_step (its get_batch minus the CUDA broadcast)."""
    batch = next(data_iterator)
    SEEN.append((data_iterator, batch))
    output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
    return output, partial(gpt_loss_func, batch["loss_mask"])


def gather_shards(tensor):
    """A tensor-parallel shard [V/tp, ...] all-gathered over the TP group -> [V, ...]."""
    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.detach().contiguous(), group=group)
    return torch.cat(parts)


def gather(obj, group):
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def max_err(got, ref):
    """(max |got - ref| over the finite reference entries, whether both are finite at the same rows)."""
    finite = torch.isfinite(ref)
    same_inf = bool(torch.equal(torch.isfinite(got), finite))
    return float((got.double()[finite] - ref[finite]).abs().max()), same_inf


def full_head(model):
    """The unsharded output weight [V, H] and bias [V] (all-gathered over the TP group)."""
    return [gather_shards(t) for t in (model.shared_embedding_or_output_weight(), model.output_layer.bias)]


def rank_env():
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
