"""Criterion ``entropy``: the mean prediction entropy of the early exit over each row's scored tokens
(the best measured criterion, the library's default)."""
from __future__ import annotations

from .base import Criterion, register_criterion


@register_criterion
class ExitEntropy(Criterion):
    name = statistic = "entropy"  # the score is the rows' means of the statistic (Criterion.score)
