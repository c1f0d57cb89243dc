"""The selection criteria, one module each, behind one protocol (``base``): ``loss`` and ``entropy``
(the kernels' row means), ``freq_loss``, ``importance``, ``stored`` and ``reducible``; the early-exit
scorer they read (``early_exit``), the stored per-row columns (``columns``) and the scoring of a
gross batch under the configured criterion (``scoring``). Adding a criterion is one module with a
``register_criterion`` class, here or anywhere imported before the config is read.
"""
from .base import (SAMPLED, TOPK, Criterion, NoOptions, ScoringInputs, TokenValues, criterion_class, criterion_names,
                   owner_of, register_criterion, unregister_criterion)
from .keys import canonical_section, check_unread, make_options, merge_sections
from .early_exit import early_exit_scores, early_exit_token_scores, early_exit_token_statistic
from .scoring import check_model, criterion_of, criterion_scores, load_state_dict, model_kind, state_dict
from .unigram import load_unigram_counts, save_unigram_counts, unigram_counts, unigram_neg_log_probs
# The built-in criteria (registered on import), in the order they are listed.
from .entropy import ExitEntropy
from .loss import ExitLoss
from .freq_loss import FrequencyLoss, RunningLossBaseline, UnigramBaseline
from .importance import ImportanceSampling
from .stored import StoredScore
from .reducible import ReducibleLoss, reducible_scores, register_reference_loader

__all__ = [
    "SAMPLED", "TOPK", "Criterion", "NoOptions", "ScoringInputs", "TokenValues", "criterion_class", "criterion_names",
    "owner_of", "canonical_section", "check_unread", "make_options", "merge_sections", "register_criterion",
    "unregister_criterion", "early_exit_scores", "early_exit_token_scores", "early_exit_token_statistic",
    "check_model", "criterion_of", "load_state_dict", "model_kind", "criterion_scores",
    "state_dict", "load_unigram_counts", "save_unigram_counts", "unigram_counts", "unigram_neg_log_probs",
    "ExitEntropy", "ExitLoss", "FrequencyLoss", "RunningLossBaseline", "UnigramBaseline", "ImportanceSampling",
    "StoredScore", "ReducibleLoss", "reducible_scores", "register_reference_loader",
]
