"""Criterion ``loss``: the mean early-exit cross-entropy over each row's scored tokens (the paper's
default; at exit L, the full model's own loss)."""
from __future__ import annotations

from .base import Criterion, register_criterion


@register_criterion
class ExitLoss(Criterion):
    name = statistic = "loss"  # the score is the rows' means of the statistic (Criterion.score)
