"""Criterion ``importance``: unbiased importance sampling of rows (``sift_ds.importance``). A row's
score is the mean over its scored tokens of ``||softmax(z) - onehot(y)||_2``, the gradient-norm
bound; rows are drawn with replacement with probability ``(1 - mix) g_i / sum g + mix / N`` and
weighted in the training loss. The weights reproduce a masked-LM token mean: causal LMs and a
next-sentence loss are not served."""
from __future__ import annotations

from dataclasses import dataclass

from .. import importance
from ..config_io import key_field
from ..kernels import reduce_to_sequences
from ..registry import ENCODER
from .base import SAMPLED, Criterion, register_criterion
from .early_exit import GRADIENT_NORM


@dataclass(frozen=True)
class ImportanceOptions:
    importance_mix: float = key_field(
        0.5, "importance: the uniform share lambda of the sampling probability p_i = (1 - lambda) g_i / sum g + "
             "lambda / N (0 < lambda <= 1: every row can be drawn, so the 1 / (N p_i) weights stay bounded)")


@register_criterion
class ImportanceSampling(Criterion):
    name = "importance"
    Options = ImportanceOptions
    statistic, per_token = GRADIENT_NORM, True
    rows = SAMPLED
    kinds = (ENCODER,)

    @classmethod
    def check_options(cls, options, config) -> None:
        if not 0.0 < float(options.importance_mix) <= 1.0:
            raise ValueError(f"sift.importance.importance_mix must be in (0, 1], got {options.importance_mix}")
        if not config.plain_topk:
            raise ValueError("sift.criterion='importance' samples rows itself: sift.sampling must be 'topk' and "
                             "sift.anneal_end_step, sift.random_fraction, sift.outlier_fraction 0")

    def score(self, exit, inputs):
        return reduce_to_sequences(exit.values, exit.rows, inputs.num_rows)

    def sampling_probabilities(self, scores):
        return importance.sampling_probabilities(scores, self.options.importance_mix)
