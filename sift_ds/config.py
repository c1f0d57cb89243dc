"""The ``"sift"`` section of a DeepSpeed config as a typed, frozen, validated ``SiftConfig``
(reading a ds_config, old key names and command-line parsers: ``config_io``).

Each field carries its help text and choices as metadata, so that command lines (the pretraining
job's ``--sift_*`` flags, Megatron's ``--sift-*``) are generated from the dataclass and cannot miss
a field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from . import criteria
from .config_io import ALIASES, AUTO, START_STEP, check_field_types, key_field, unknown_key_message
from .kernels import BACKENDS

SECTION = "sift"
SCOPES = ("global", "local")
SAMPLINGS = ("topk", "rank")
_key = key_field


@dataclass(frozen=True)
class SiftConfig:
    """SIFT settings (Das et al., ICML 2024, sections 6-7); see each field's help, or docs/design.md.

    The default criterion is the best measured one, the prediction entropy at exit layer 1 (the paper's
    default is the early-exit loss, ``criterion="loss"``); see "Choosing a criterion" in docs/results.md.
    Selection starts inside the learning-rate warm-up (``selection_start_step="auto"``: at
    ``selection_start_share`` of it), which each front-end resolves with ``sift_ds.schedule``. The rest
    follows the paper: strict top-k, keep 0.5, no annealing, no random share, no outlier guard.
    ``warmup_steps`` is the old name of ``selection_start_step`` (given, it is moved there).
    """

    enabled: bool = _key(True, "False trains vanilla: the gross batch is the micro-batch, nothing is scored")
    criterion: str = _key("entropy", "a registered criterion (sift_ds.criteria): prediction entropy (entropy, the best "
                                      "measured), the masked-LM cross-entropy (loss, the paper's default), the loss "
                                      "minus a per-token-id baseline (freq_loss), unbiased importance sampling by the "
                                      "gradient-norm bound (importance), a per-block score of a score file (stored: "
                                      "offline sifting, no model pass) or z(exit-k loss) - z(reference loss) "
                                      "(reducible); its own keys go in the section named after it")
    exit_layer: int = _key(1, "score from the hidden states after this many encoder layers (1..L; L: the exact loss)")
    keep_ratio: float = _key(0.5, "fraction of the gross batch trained on (0 < r <= 1; the paper keeps 0.5)")
    selection_start_step: Union[int, str] = _key(
        AUTO, "the optimizer step where selection starts (before it a uniform random subset is kept), or auto: "
              "selection_start_share of the learning-rate warm-up; a start at or after the learning-rate peak is "
              "refused unless start_after_lr_peak", kind=START_STEP)
    selection_start_share: float = _key(
        0.3, "auto's share of the learning-rate warm-up (0 <= share <= 1): selection_start_step = round(share x "
             "warm-up steps), halves up; the measured studies started selection at 30 of 100 warm-up steps")
    start_after_lr_peak: bool = _key(
        False, "allow a selection start at or after the learning-rate peak (selection at the peak collapsed "
               "entropy-SIFT in the measurements)")
    warmup_steps: Optional[int] = _key(None, "the old name of selection_start_step (an alias; not both)",
                                       kind="int")
    scope: str = _key("global", "top-k over all data-parallel ranks' gross batches, or per rank", SCOPES)
    kernel: str = _key("auto", "scorer backend: auto (Triton on CUDA), triton or torch", BACKENDS)
    seed: int = _key(1234, "seed of every random choice of the selector (stateless per step: resume is exact)")
    anneal_end_step: int = _key(
        0, "0: keep_ratio stays fixed; else it rises linearly from keep_ratio at anneal_start_step to 1 (no "
           "selection) at this step, by picking from a shrinking random pool (Composer SelectiveBackprop's end)")
    anneal_start_step: int = _key(
        0, "where the annealing to full data begins (0: at selection_start_step); e.g. the start of the learning-rate "
           "decay's last quarter, so that the run ends on full data like a budget-matched vanilla run")
    random_fraction: float = _key(0.0, "share of the kept rows drawn uniformly from the rows not selected by score")
    sampling: str = _key(
        "topk", "topk: the highest scores; rank: sample rows with probability percentile^(1/keep - 1) of their "
                "score rank (Composer SelectiveBackprop)", SAMPLINGS)
    outlier_fraction: float = _key(0.0, "drop this top share of the scores (noisy, unlearnable rows) before selecting")
    max_positions: int = _key(
        0, "score at most this many positions per row, a seeded random subset (0: every labelled position); "
           "for long causal-LM rows, where the vocabulary projection at every position would cost more than the prefix")
    # The criterion's own keys (its typed sub-config, the section named after it); None: its defaults.
    options: Any = field(default=None, compare=True)

    def __post_init__(self):
        """The old key ``warmup_steps`` moves to ``selection_start_step`` (given both: a ValueError); the
        criterion's options default to its sub-config's defaults, or are made from a mapping."""
        object.__setattr__(self, "options", criteria.make_options(self.criterion, self.options))
        if self.warmup_steps is None:
            return
        if self.selection_start_step != AUTO:
            raise ValueError(f"sift.warmup_steps={self.warmup_steps!r} is the old name of sift.selection_start_step="
                             f"{self.selection_start_step!r}: give one of them")
        object.__setattr__(self, "selection_start_step", self.warmup_steps)
        object.__setattr__(self, "warmup_steps", None)

    # ------------------------------------------------------------------ construction
    @property
    def criterion_class(self) -> type:
        """The registered criterion ``criterion`` names (a ValueError naming sift.criterion otherwise)."""
        return criteria.criterion_class(self.criterion)

    def make_criterion(self):
        """A new object of the configured criterion (``sift_ds.criteria.criterion_of`` keeps one per adapter)."""
        return self.criterion_class(self.options, self)

    @classmethod
    def from_dict(cls, section: Optional[Mapping[str, Any]]) -> "SiftConfig":
        """Build from the ``"sift"`` section; every bad value is a ValueError naming its key. Keys
        starting with ``_`` are notes (ignored); an unknown key is named with the closest known one.
        A criterion's keys go in the section named after it (``"freq_loss": {"baseline_decay": 0.95}``);
        the flat spelling (``"baseline_decay": 0.95``) is read as that (``canonical_section``)."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError(f"ds_config key 'sift' must be a JSON object, got {type(section).__name__}")
        section = canonical_section(section)
        name = section.get("criterion", cls.criterion)
        if not isinstance(name, str):
            raise ValueError(f"sift.criterion must be of type str, got {name!r} ({type(name).__name__})")
        criteria.criterion_class(name)
        for other in criteria.criterion_names():
            if other != name and other in section:
                criteria.check_unread(other, name, section.pop(other))
        known = {f.name for f in dataclasses.fields(cls) if f.name != "options"} | {name}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(unknown_key_message("ds_config 'sift' section", unknown[0], known))
        options = section.pop(name, None)
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"ds_config key 'sift.{name}' must be a JSON object, got {type(options).__name__}")
        cfg = cls(**dict(section), options=options)
        cfg.validate()
        return cfg

    @classmethod
    def from_megatron_args(cls, args: Any) -> "SiftConfig":
        """Build from a Megatron ``args`` namespace: every field ``f`` is read from the attribute
        ``sift_<f>`` (the flag ``--sift-<f>`` that ``sift_ds.megatron.add_arguments`` adds); a missing
        or None attribute keeps the default. Bad values are ValueErrors naming the key."""
        given = {name: getattr(args, f"sift_{name}") for name, _ in key_fields()
                 if getattr(args, f"sift_{name}", None) is not None}
        return cls.from_dict(given)

    def validate(self) -> None:
        check_field_types(self)
        if not 0.0 <= float(self.selection_start_share) <= 1.0:
            raise ValueError(f"sift.selection_start_share must be in [0, 1], got {self.selection_start_share}")
        if self.exit_layer < 1:
            raise ValueError(f"sift.exit_layer must be >= 1 (layers are counted from 1), got {self.exit_layer}")
        if not 0.0 < float(self.keep_ratio) <= 1.0:
            raise ValueError(f"sift.keep_ratio must be in (0, 1], got {self.keep_ratio}")
        for key in ("selection_start_step", "anneal_end_step", "anneal_start_step", "max_positions", "seed"):
            if getattr(self, key) != AUTO and getattr(self, key) < 0:
                raise ValueError(f"sift.{key} must be >= 0, got {getattr(self, key)}")
        if self.anneal_start_step and not self.anneal_end_step:
            raise ValueError(f"sift.anneal_start_step={self.anneal_start_step} needs sift.anneal_end_step")
        start = self.selection_start_step
        if start == AUTO:  # checked against the annealing once resolved (sift_ds.schedule)
            start = 0
        if self.anneal_end_step and self.anneal_end_step <= start:
            raise ValueError(f"sift.anneal_end_step={self.anneal_end_step} must be 0 or after "
                             f"sift.selection_start_step={start}")
        if self.anneal_start_step and not start <= self.anneal_start_step < self.anneal_end_step:
            raise ValueError(f"sift.anneal_start_step={self.anneal_start_step} must lie in [sift.selection_start_step="
                             f"{start}, sift.anneal_end_step={self.anneal_end_step})")
        for key in ("random_fraction", "outlier_fraction"):
            if not 0.0 <= float(getattr(self, key)) < 1.0:
                raise ValueError(f"sift.{key} must be in [0, 1), got {getattr(self, key)}")
        check_field_types(self.options, f"sift.{self.criterion}.")
        self.criterion_class.check_options(self.options, self)
        if self.outlier_fraction + self.keep_ratio > 1.0 + 1e-9:
            raise ValueError(f"sift.outlier_fraction={self.outlier_fraction} + sift.keep_ratio={self.keep_ratio} "
                             "exceeds 1: too few rows would remain to keep")

    def validate_for_model(self, num_layers: int) -> None:
        if self.exit_layer > num_layers:
            raise ValueError(
                f"sift.exit_layer={self.exit_layer} exceeds the model's depth ({num_layers} encoder layers)"
            )

    def gross_batch_size(self, micro_batch: int, micro_key: str = "train_micro_batch_size_per_gpu") -> int:
        """Rows per rank that are scored so that ``micro_batch`` of them are kept (``micro_key``: the
        front-end's name for the micro-batch, in the error)."""
        if not self.enabled:
            return micro_batch
        gross = micro_batch / float(self.keep_ratio)
        rounded = round(gross)
        if abs(gross - rounded) > 1e-6 or rounded < micro_batch:
            raise ValueError(
                f"sift.keep_ratio={self.keep_ratio} with {micro_key}={micro_batch} gives a "
                f"gross batch of {gross:g} rows per rank; it must be a whole number (micro_batch / keep_ratio)"
            )
        return int(rounded)

    @property
    def start_step(self) -> int:
        """``selection_start_step`` as a step; ValueError while it is "auto" (not yet resolved against
        the learning-rate warm-up by the front-end: ``sift_ds.schedule.resolve_selection_start``)."""
        if self.selection_start_step == AUTO:
            raise ValueError('sift.selection_start_step is "auto", which needs the learning-rate warm-up: resolve it '
                             "with sift_ds.schedule.resolve_selection_start, or give the step")
        return int(self.selection_start_step)

    def selecting(self, step: int) -> bool:
        """Whether optimizer step ``step`` selects by score (after the start, before the annealing ends)."""
        return (self.enabled and step >= self.start_step
                and not (self.anneal_end_step and step >= self.anneal_end_step))

    def keep_ratio_at(self, step: int) -> float:
        """The effective keep ratio of step ``step``: ``keep_ratio``, annealed to 1 when configured."""
        if not self.anneal_end_step:
            return float(self.keep_ratio)
        start = self.anneal_start_step or self.start_step
        if not self.anneal_end_step or step <= start:
            return float(self.keep_ratio)
        done = min(1.0, (step - start) / (self.anneal_end_step - start))
        return float(self.keep_ratio) + done * (1.0 - float(self.keep_ratio))

    @property
    def plain_topk(self) -> bool:
        """Strict top-k of all scores (the paper's selection), no knob active."""
        return (self.sampling == "topk" and not self.anneal_end_step and not self.random_fraction
                and not self.outlier_fraction)

    def to_dict(self, flat: bool = False) -> dict:
        """The section's keys (the alias left out: it is always moved to selection_start_step), the
        criterion's in the section named after it (``flat``: beside the others, the old spelling)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ALIASES
               and f.name != "options"}
        own = dataclasses.asdict(self.options)
        if flat:
            out.update(own)
        elif own:
            out[self.criterion] = own
        return out


def canonical_section(section: Mapping[str, Any]) -> dict:
    """A "sift" section in the current spelling (``sift_ds.criteria.keys.canonical_section``)."""
    return criteria.canonical_section(section, {f.name for f in dataclasses.fields(SiftConfig)})


def key_fields():
    """(name, Field) of every key a command line can set: ``SiftConfig``'s, then each registered
    criterion's (a flag ``--sift_<key>`` sets a criterion's key in its section)."""
    own = [(f.name, f) for f in dataclasses.fields(SiftConfig) if f.name != "options"]
    return own + [(f.name, f) for name in criteria.criterion_names()
                  for f in dataclasses.fields(criteria.criterion_class(name).Options)]


def split_ds_config(ds_config: Mapping[str, Any]):
    """(SiftConfig, the ds_config without the "sift" section, which DeepSpeed does not know)."""
    rest = {k: v for k, v in ds_config.items() if k != SECTION}
    return SiftConfig.from_dict(ds_config.get(SECTION)), rest
