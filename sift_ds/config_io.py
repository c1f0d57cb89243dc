"""Reading configuration: a ds_config from a path or a dict (its notes dropped, errors naming the
file), the ``"sift"`` section's old key names and unknown keys (named with the closest known one),
the command-line parsers of the generated ``--sift_*`` / ``--sift-*`` flags, and each field's type check."""
from __future__ import annotations

import argparse
import difflib
import json
import os
from dataclasses import Field, field, fields
from typing import Any, Mapping, Optional, Tuple, Union

AUTO = "auto"  # selection_start_step: resolved against the learning-rate warm-up (sift_ds.schedule)
ALIASES = {"warmup_steps": "selection_start_step"}  # old key -> its name now
START_STEP = "int_or_auto"  # the kind of selection_start_step: a step number or "auto"


def key_field(default, help: str, choices: Optional[Tuple[str, ...]] = None, kind: Optional[str] = None):
    """A config key: a dataclass field carrying its help text, choices and value kind (for command lines)."""
    return field(default=default, metadata={"help": help, "choices": choices, "kind": kind})


def field_kind(f: Field) -> str:
    """A field's value kind for validation and command lines: bool, int, float, str or int_or_auto."""
    return f.metadata.get("kind") or (f.type if isinstance(f.type, str) else f.type.__name__)


def check_field_types(config, where: str = "sift.") -> None:
    """Every key field of a ``SiftConfig`` (or a criterion's sub-config, ``where`` "sift.<name>.") of its
    kind and among its choices (ValueError naming the key)."""
    for f in fields(config):
        if "help" not in f.metadata:
            continue
        value, kind = getattr(config, f.name), field_kind(f)
        if kind == START_STEP:
            if value != AUTO:
                _check_type(where + f.name, value, int, 'int or "auto"')
        elif value is not None or f.default is not None:
            _check_type(where + f.name, value, {"bool": bool, "int": int, "float": (int, float), "str": str}[kind])
        if f.metadata["choices"] and value not in f.metadata["choices"]:
            raise ValueError(f"{where}{f.name} must be one of {list(f.metadata['choices'])}, got {value!r}")


def _check_type(key: str, value: Any, types, names: Optional[str] = None) -> None:
    # bool is an int subclass: reject True for an int key and 1 for a bool key.
    want_bool = types is bool
    if want_bool != isinstance(value, bool) or not isinstance(value, types):
        names = names or (types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types))
        raise ValueError(f"{key} must be of type {names}, got {value!r} ({type(value).__name__})")


def canonical_keys(section: Mapping[str, Any]) -> dict:
    """The section without its notes (keys starting with ``_``) and with old key names replaced by the
    current ones (``ALIASES``); a key given under both names is a ValueError."""
    out = {k: v for k, v in section.items() if not (isinstance(k, str) and k.startswith("_"))}
    for old, new in ALIASES.items():
        if old in out:
            if new in out:
                raise ValueError(f"sift.{old} is the old name of sift.{new}: give one of them, not both")
            out[new] = out.pop(old)
    return out


def unknown_key_message(where: str, key: str, known) -> str:
    """``WHERE: unknown key 'x'; did you mean 'y'? (known keys: ...)``: one line."""
    close = difflib.get_close_matches(str(key), sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{where}: unknown key {key!r}{hint} (known keys: {', '.join(sorted(known))})"


def str2bool(value: str) -> bool:
    """A command-line boolean: 1/true/yes/on or 0/false/no/off."""
    lowered = str(value).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def int_or_auto(value: str):
    """A command-line step number or ``auto``."""
    if str(value).lower() == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a step number or "auto", got {value!r}') from None


# The command-line parser of each field type (the pretraining job's and Megatron's generated flags).
CLI_TYPES = {"bool": str2bool, "int": int, "float": float, "str": str, START_STEP: int_or_auto}


def without_notes(value: Any) -> Any:
    """``value`` without the keys starting with ``_`` at any depth: notes for people (``"_comment"``),
    which DeepSpeed's own config sections would otherwise refuse."""
    if isinstance(value, dict):
        return {k: without_notes(v) for k, v in value.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(value, list):
        return [without_notes(v) for v in value]
    return value


def load_ds_config(config: Union[str, os.PathLike, Mapping[str, Any]]) -> dict:
    """A ds_config as a fresh dict, from a dict or a JSON file path (errors name the file), without its
    notes (``without_notes``)."""
    if isinstance(config, Mapping):
        return without_notes(json.loads(json.dumps(config)))  # deep copy; also rejects non-JSON values early
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise ValueError(f"ds_config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            loaded = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"ds_config file {path} is not valid JSON: {err}") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"ds_config file {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"ds_config file {path} must hold a JSON object, got a JSON {type(loaded).__name__}")
    return without_notes(loaded)
