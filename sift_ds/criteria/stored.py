"""Criterion ``stored`` (offline sifting): a score computed once per training block by
``launch/score_corpus.py`` rides in the gross batch as the float column ``sift_score``; the
selection runs no model."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..config_io import key_field
from .base import Criterion, StoredScores, register_criterion
from .columns import SCORE_COLUMN, stored_column


@dataclass(frozen=True)
class StoredOptions:
    score_file: str = key_field("", "criterion stored: the score file of launch/score_corpus.py (scores per "
                                    "training block)")
    score_name: str = key_field("", "criterion stored: which score of score_file selects (e.g. unique_share)")


@register_criterion
class StoredScore(Criterion):
    name = "stored"
    Options = StoredOptions
    statistic = None  # no model pass
    probe_as = "loss"  # the probe batch has no stored column: its exit-k loss is probed
    arm_key = "score_name"  # a study arm stored:NAME selects by the score NAME

    @classmethod
    def check_options(cls, options, config) -> None:
        for key in ("score_file", "score_name"):
            if not getattr(options, key):
                raise ValueError(f"sift.stored.{key} is required by sift.criterion='stored'")
        if not os.path.exists(options.score_file):
            raise ValueError(f"sift.stored.score_file: no such file or directory: {options.score_file}")

    def stored_scores(self):
        return StoredScores(self.options.score_file, self.options.score_name, SCORE_COLUMN)

    def input_files(self):
        return {"sift.stored.score_file": self.options.score_file}

    def score(self, exit, inputs):
        return stored_column(inputs.columns, SCORE_COLUMN, inputs.batch[inputs.labels_key].device)
