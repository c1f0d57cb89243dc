"""Scoring a gross batch under the configured criterion: the criterion object of an adapter (its
state lives there, one per criterion), the exit statistic it asks for, and its scores."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from .. import registry
from .base import Criterion, ScoringInputs, TokenValues
from .early_exit import early_exit_scores, early_exit_token_statistic

_ATTRIBUTE = "_sift_criteria"  # where an adapter holds its criteria, by name


def criterion_of(adapter: Any, config: Any) -> Criterion:
    """The adapter's criterion object for ``config`` (made on first use and kept on the adapter, so
    that its state follows the model; a config with other options of the same criterion makes a new one)."""
    held = getattr(adapter, _ATTRIBUTE, None)
    if held is None:
        held = {}
        setattr(adapter, _ATTRIBUTE, held)
    made = held.get(config.criterion)
    if made is None or made.options != config.options or made.config.kernel != config.kernel:
        made = held[config.criterion] = config.make_criterion()
    return made


def model_kind(adapter: Any) -> Optional[str]:
    """The kind of model (``registry.ENCODER`` or ``CAUSAL``) of the adapter's registered family, else
    its own ``kind`` attribute (an adapter of no registered family); None when neither says."""
    family = getattr(adapter, "registration", None)  # set on the class by register_family (inherited)
    registered = family is not None and any(f is family for f in registry.families())
    return family.kind if registered else getattr(adapter, "kind", None)


def check_model(adapter: Any, config: Any) -> None:
    """The configured criterion serves the adapter's kind of model (a one-line ValueError otherwise)."""
    served = config.criterion_class.kinds
    if set(served) >= set(registry.KINDS):
        return
    kind = model_kind(adapter)
    if kind not in served:
        what = f"a {kind} LM" if kind else f"an adapter of no registered family ({type(adapter).__name__}, no kind)"
        raise ValueError(f"sift.criterion={config.criterion!r} serves {' and '.join(served)} LMs only, the model is "
                         f"{what}")


@torch.no_grad()
def criterion_scores(adapter: Any, config: Any, batch: Mapping[str, torch.Tensor], positions: Optional[tuple] = None,
                    labels_key: str = "labels", check_targets: bool = True, seed: int = 0, group=None,
                    update: bool = False, max_positions: Optional[int] = None,
                    columns: Optional[Mapping[str, torch.Tensor]] = None,
                    aligned: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 [B]: the rows' scores under ``config.criterion`` (``-inf`` for a row with no scored
    token); the other arguments are ``early_exit_scores``'s (``max_positions`` None: the config's).
    ``update``: the selection's call, after which the criterion's state may move (a collective over
    ``group``). ``columns``: the gross batch's stored per-row columns."""
    criterion = criterion_of(adapter, config)
    common = dict(positions=positions, labels_key=labels_key, check_targets=check_targets, seed=seed, aligned=aligned,
                  max_positions=config.max_positions if max_positions is None else max_positions)
    exit = None
    if criterion.statistic is not None and criterion.per_token:
        exit = TokenValues(*early_exit_token_statistic(adapter, batch, config.exit_layer, criterion.statistic,
                                                       config.kernel, **common))
    elif criterion.statistic is not None:
        exit = early_exit_scores(adapter, batch, config.exit_layer, criterion.statistic, config.kernel, **common)
    inputs = ScoringInputs(adapter, batch, columns or {}, batch[labels_key].shape[0], labels_key, group, update)
    return criterion.score(exit, inputs)


def state_dict(adapter: Any) -> Optional[dict]:
    """The state of the adapter's criteria for a checkpoint (None when none keeps any)."""
    held = getattr(adapter, _ATTRIBUTE, None) or {}
    states = [c.state_dict() for c in held.values()]
    return next((s for s in states if s), None)


def load_state_dict(adapter: Any, config: Any, state: Optional[Mapping], device=None) -> None:
    """Restore ``state_dict``'s result into the configured criterion (a no-op for None: a checkpoint
    taken before any selection). ``device`` is accepted for older callers; state moves where it is used."""
    if state:
        criterion_of(adapter, config).load_state_dict(state)
