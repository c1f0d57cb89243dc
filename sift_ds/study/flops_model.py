"""What the masked-positions-only head and SIFT's selection should save at a shape not measured
(e.g. BERT-base on a GPU), from the pretraining job's own FLOPs accounting
(``sift_ds.pretrain.metrics.FlopsModel``: 6 N + 12 L H T per trained token, the MLM head at every
position or at the masked share only; the selection a forward of the embeddings, the first k layers
and the head at the masked positions, for every gross token). Step time is taken as proportional
to FLOPs: a model, not a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BertConfig, BertForMaskedLM

from ..pretrain.metrics import FlopsModel

BERT_BASE = BertConfig()  # transformers' defaults are BERT-base: 12 layers, hidden 768, vocabulary 30,522


@dataclass(frozen=True)
class StepModel:
    head_share: float       # the dense MLM head's share of a training step's FLOPs
    head_speedup: float     # dense-head step FLOPs over masked-only-head step FLOPs
    selection_share: float  # the selection's share of a SIFT step's FLOPs (masked-only head)


def step_model(config, seq_len: int, exit_layer: int, keep_ratio: float, masked_share: float = 0.15) -> StepModel:
    """The FLOPs of a BERT training step of ``config`` at ``seq_len`` (a model built on the meta
    device: nothing is allocated)."""
    with torch.device("meta"):
        model = BertForMaskedLM(config)
    dense = FlopsModel.for_masked_lm(model, seq_len, exit_layer, masked_share, sparse_head=False)
    sparse = FlopsModel.for_masked_lm(model, seq_len, exit_layer, masked_share, sparse_head=True)
    head = (dense.train_per_token - sparse.train_per_token) / (1.0 - masked_share)  # the head at every position
    select = sparse.select_per_token / keep_ratio  # per trained token: 1 / keep_ratio gross tokens scored
    return StepModel(head / dense.train_per_token, dense.train_per_token / sparse.train_per_token,
                     select / (select + sparse.train_per_token))


def sift_speedup(sample_saving: float, selection_share: float) -> float:
    """Wall-clock speed-up of SIFT from its saving in backprop samples and the selection's share of
    the step: the same loss in 1/saving of the trained samples, each step longer by 1/(1 - share)."""
    return sample_saving * (1.0 - selection_share)
