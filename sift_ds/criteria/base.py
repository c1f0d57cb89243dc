"""The criterion protocol and its registry: a criterion is one decorated class, the way model
families register (``sift_ds.registry``).

    @register_criterion
    class FrequencyLoss(Criterion):
        name = "freq_loss"
        Options = FrequencyOptions       # its typed sub-config: the ds_config's sift.freq_loss section
        statistic, per_token = "loss", True
        def score(self, exit, inputs): ...          # float32 [B] from the exit's outputs
        def state_dict(self): ...                   # its state ({} for a stateless criterion)

A criterion declares:

* **what it scores from**: ``statistic``, the per-token statistic of the early exit it needs
  (``"loss"``, ``"entropy"``, ``"gradnorm"``; None: no model pass, e.g. a stored score), as the
  rows' means (``per_token`` False: one fused kernel) or per token (``TokenValues``);
* **how rows are chosen** from its scores (``rows``): ``TOPK``, the selector's top-k and its knobs,
  or ``SAMPLED``, drawn with replacement by ``sampling_probabilities`` and weighted in the training
  loss (``sift_ds.importance``);
* **which models it serves** (``kinds``: masked LMs, causal LMs), checked against the adapter's
  registered family at start-up;
* **its state**, ``state_dict`` / ``load_state_dict`` (saved in each front-end's checkpoints);
* **its sub-config**, ``Options``: a frozen dataclass whose fields carry help text and choices like
  ``SiftConfig``'s (each gets a ``--sift_<key>`` flag), validated by ``check_options``.

A module outside this package registers a criterion the same way; it must be imported before the
config that names it is read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, NamedTuple, Optional, Tuple

import torch

from ..registry import CAUSAL, ENCODER

TOPK = "topk"  # the rows with the highest scores (the selector, with its knobs)
SAMPLED = "sampled"  # rows drawn with replacement by probability, with loss weights


@dataclass(frozen=True)
class NoOptions:
    """The sub-config of a criterion without keys of its own."""


@dataclass
class TokenValues:
    """A per-token statistic at the scored positions: values float32 [N], their target ids int64 [N],
    the row of each int64 [N], in flat position order."""

    values: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor


@dataclass
class ScoringInputs:
    """What a criterion's ``score`` reads besides the exit's statistic."""

    adapter: Any
    batch: Mapping[str, torch.Tensor]  # the gross batch on the scoring device, without stored columns
    columns: Mapping[str, torch.Tensor]  # the gross batch's stored per-row columns (sift_ds.criteria.columns)
    num_rows: int
    labels_key: str = "labels"
    group: Any = None  # the data-parallel group (a state update is a collective over it)
    update: bool = False  # the selection's call: the criterion's state may move after scoring


class StoredScores(NamedTuple):
    """A score read per training block from a score file, which the data loader attaches to each row
    as the batch column ``column``."""

    path: str
    name: str
    column: str


class Criterion:
    """The base of every criterion (module docstring). ``options``: its ``Options`` instance;
    ``config``: the whole ``SiftConfig``."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    statistic: ClassVar[Optional[str]] = "loss"
    per_token: ClassVar[bool] = False
    rows: ClassVar[str] = TOPK
    kinds: ClassVar[Tuple[str, ...]] = (ENCODER, CAUSAL)
    probe_as: ClassVar[Optional[str]] = None  # the criterion the fidelity probe scores with (None: this one)
    arm_key: ClassVar[Optional[str]] = None  # a study arm CRITERION:VALUE sets this key (None: the exit layer)

    def __init__(self, options: Any, config: Any):
        self.options, self.config = options, config

    def score(self, exit: Any, inputs: ScoringInputs) -> torch.Tensor:
        """float32 [B]: the rows' scores (``-inf`` for a row with no scored token). ``exit``: the rows'
        means of ``statistic`` [B] (``per_token`` False), a ``TokenValues`` (True), or None. By default
        the rows' means themselves."""
        if self.per_token or self.statistic is None:
            raise NotImplementedError(f"criterion {self.name!r} must define score()")
        return exit

    def sampling_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """float64 [N]: the probability of drawing each row (``rows = SAMPLED`` only)."""
        raise NotImplementedError(f"criterion {self.name!r} chooses rows by top-k")

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def stored_scores(self) -> Optional[StoredScores]:
        """The per-block score the criterion reads from a file (None: none)."""
        return None

    def input_files(self) -> Dict[str, str]:
        """The files the criterion reads, by key (``sift.<name>.<key>``), for the checks of a run's inputs."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"the checkpoint holds criterion state, and sift.criterion={self.name!r} keeps none")

    @classmethod
    def check_options(cls, options: Any, config: Any) -> None:
        """One-line ValueErrors naming ``sift.<name>.<key>`` for bad values (types and choices are checked
        already)."""


_CRITERIA: Dict[str, type] = {}


def register_criterion(cls: type) -> type:
    """Class decorator: register a ``Criterion`` subclass under its ``name``. A name, or an option
    key, that another criterion already has is refused (keys are also ``--sift_<key>`` flags)."""
    if not (isinstance(cls, type) and issubclass(cls, Criterion)) or not cls.name:
        raise ValueError(f"{cls!r}: a criterion is a Criterion subclass with a name")
    if not (dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen):
        raise ValueError(f"criterion {cls.name!r}: Options must be a frozen dataclass")
    if cls.rows not in (TOPK, SAMPLED):
        raise ValueError(f"criterion {cls.name!r}: rows must be {TOPK!r} or {SAMPLED!r}, got {cls.rows!r}")
    for other in _CRITERIA.values():
        if other.__qualname__ == cls.__qualname__ and other.__module__ == cls.__module__:
            continue
        if other.name == cls.name:
            raise ValueError(f"criterion {cls.name!r} is already registered by {other.__module__}.{other.__qualname__}")
        clash = sorted(option_keys(other) & option_keys(cls))
        if clash:
            raise ValueError(f"criterion {cls.name!r} declares key {clash[0]!r}, which criterion {other.name!r} has")
    _CRITERIA[cls.name] = cls
    return cls


def unregister_criterion(name: str) -> None:
    """Remove a registered criterion (one registered for a test, say)."""
    _CRITERIA.pop(name, None)


def criterion_names() -> Tuple[str, ...]:
    """Every registered criterion's name, in registration order."""
    return tuple(_CRITERIA)


def criterion_class(name: str) -> type:
    """The criterion registered as ``name``; a ValueError naming ``sift.criterion`` otherwise."""
    if name not in _CRITERIA:
        raise ValueError(f"sift.criterion must be one of {list(_CRITERIA)}, got {name!r} (a criterion of another "
                         "module is registered when that module is imported)")
    return _CRITERIA[name]


def option_keys(cls: type) -> set:
    return {f.name for f in dataclasses.fields(cls.Options)}


def owner_of(key: str) -> Optional[type]:
    """The registered criterion whose sub-config has ``key`` (None: no criterion's)."""
    return next((c for c in _CRITERIA.values() if key in option_keys(c)), None)
