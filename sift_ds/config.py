"""The ``"sift"`` section of a DeepSpeed config, as a typed, validated dataclass."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

SECTION = "sift"
CRITERIA = ("loss", "entropy")
SCOPES = ("global", "local")
KERNELS = ("auto", "triton", "torch")


@dataclass(frozen=True)
class SiftConfig:
    """SIFT settings (Das et al., ICML 2024, sections 6-7).

    enabled       -- False trains vanilla: the gross batch is the micro-batch and nothing is scored.
    criterion     -- "loss" (early-exit masked-LM cross-entropy) or "entropy" (prediction entropy).
    exit_layer    -- score from the hidden states after this many encoder layers (1..L; L = exact loss,
                     i.e. OSGD / OHEM).
    keep_ratio    -- fraction of the gross batch that is trained on (0 < r <= 1; the paper keeps 0.5).
    warmup_steps  -- optimizer steps with no filtering: a uniform random subset of micro-batch size is
                     kept, so the effective batch equals vanilla's (the paper: 20K of 800K steps).
    scope         -- "global": top-k over all data-parallel ranks' gross batches; "local": per rank.
    kernel        -- scorer backend: "auto" (Triton on CUDA), "triton" or "torch".
    seed          -- seed of the warm-up's random subsets (deterministic per step, so resume is exact).
    """

    enabled: bool = True
    criterion: str = "loss"
    exit_layer: int = 1
    keep_ratio: float = 0.5
    warmup_steps: int = 0
    scope: str = "global"
    kernel: str = "auto"
    seed: int = 1234

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, section: Optional[Mapping[str, Any]]) -> "SiftConfig":
        """Build from the ``"sift"`` section; every bad value is a ValueError naming its key."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError(f"ds_config key 'sift' must be a JSON object, got {type(section).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown key(s) in ds_config 'sift' section: {unknown}; known keys: {sorted(known)}")
        cfg = cls(**dict(section))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        _check_type("enabled", self.enabled, bool)
        _check_choice("criterion", self.criterion, CRITERIA)
        _check_type("exit_layer", self.exit_layer, int)
        if self.exit_layer < 1:
            raise ValueError(f"sift.exit_layer must be >= 1 (layers are counted from 1), got {self.exit_layer}")
        _check_type("keep_ratio", self.keep_ratio, (int, float))
        if not 0.0 < float(self.keep_ratio) <= 1.0:
            raise ValueError(f"sift.keep_ratio must be in (0, 1], got {self.keep_ratio}")
        _check_type("warmup_steps", self.warmup_steps, int)
        if self.warmup_steps < 0:
            raise ValueError(f"sift.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check_choice("scope", self.scope, SCOPES)
        _check_choice("kernel", self.kernel, KERNELS)
        _check_type("seed", self.seed, int)

    def validate_for_model(self, num_layers: int) -> None:
        if self.exit_layer > num_layers:
            raise ValueError(
                f"sift.exit_layer={self.exit_layer} exceeds the model's depth ({num_layers} encoder layers)"
            )

    def gross_batch_size(self, micro_batch: int) -> int:
        """Rows per rank that are scored so that ``micro_batch`` of them are kept."""
        if not self.enabled:
            return micro_batch
        gross = micro_batch / float(self.keep_ratio)
        rounded = round(gross)
        if abs(gross - rounded) > 1e-6 or rounded < micro_batch:
            raise ValueError(
                f"sift.keep_ratio={self.keep_ratio} with train_micro_batch_size_per_gpu={micro_batch} gives a "
                f"gross batch of {gross:g} rows per rank; it must be a whole number (micro_batch / keep_ratio)"
            )
        return int(rounded)

    def replace(self, **changes: Any) -> "SiftConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(key: str, value: Any, types) -> None:
    # bool is an int subclass: reject True for an int key and 1 for a bool key.
    want_bool = types is bool
    if want_bool != isinstance(value, bool) or not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise ValueError(f"sift.{key} must be of type {names}, got {value!r} ({type(value).__name__})")


def _check_choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"sift.{key} must be one of {list(choices)}, got {value!r}")


def load_ds_config(config: Union[str, os.PathLike, Mapping[str, Any]]) -> dict:
    """A ds_config as a fresh dict, from a dict or a JSON file path (errors name the file)."""
    if isinstance(config, Mapping):
        return json.loads(json.dumps(config))  # deep copy; also rejects non-JSON values early
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise ValueError(f"ds_config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"ds_config file {path} is not valid JSON: {err}") from None


def split_ds_config(ds_config: Mapping[str, Any]):
    """(SiftConfig, the ds_config without the "sift" section, which DeepSpeed does not know)."""
    rest = {k: v for k, v in ds_config.items() if k != SECTION}
    return SiftConfig.from_dict(ds_config.get(SECTION)), rest
