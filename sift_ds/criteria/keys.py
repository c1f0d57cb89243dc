"""The spelling of the criteria's keys in a "sift" section: each criterion's keys live in the section
named after it (``"freq_loss": {"baseline_decay": 0.95}``); the flat spelling of older configs
(``"baseline_decay": 0.95`` beside the other keys, which is also the ``--sift_<key>`` flags') is moved
there. A section of a criterion that is not the configured one is refused unless it only holds
defaults (an older full record named every criterion's keys)."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from ..config_io import canonical_keys, unknown_key_message
from .base import criterion_class, owner_of


def canonical_section(section: Mapping[str, Any], own: Iterable[str]) -> dict:
    """``section`` with its notes left out, old key names replaced (``config_io.canonical_keys``) and
    each criterion key given flat moved into its criterion's section; ``own``: the keys that are the
    section's own (never moved). A key given both ways is a ValueError; nothing else is validated."""
    out, own = canonical_keys(section), set(own)
    for key in [k for k in out if k not in own and owner_of(k) is not None]:
        name = owner_of(key).name
        nested = out[name] = dict(out.get(name) or {})
        if key in nested:
            raise ValueError(f"sift.{key} is the old spelling of sift.{name}.{key}: give one of them, not both")
        nested[key] = out.pop(key)
    return out


def make_options(name: str, given: Any) -> Any:
    """Criterion ``name``'s sub-config: its defaults (``given`` None), made from a mapping, or ``given``
    itself when it is one already (a ValueError naming the key for an unknown key or another type)."""
    options_class = criterion_class(name).Options
    if given is None or isinstance(given, Mapping):
        known = {f.name for f in dataclasses.fields(options_class)}
        unknown = sorted(set(given or {}) - known)
        if unknown:
            raise ValueError(unknown_key_message(f"ds_config 'sift.{name}' section", unknown[0], known))
        return options_class(**dict(given or {}))
    if not isinstance(given, options_class):
        raise ValueError(f"sift.criterion={name!r} takes {options_class.__name__} options, got {type(given).__name__}")
    return given


def merge_sections(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """Two canonical "sift" sections merged, ``overrides`` winning key by key (within a criterion's
    section too)."""
    out = dict(base)
    for key, value in overrides.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = {**out[key], **value} if both else value
    return out


def check_unread(other: str, name: str, keys: Any) -> None:
    """The section of criterion ``other`` while the configured one is ``name``: a ValueError unless
    every key in it holds its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(criterion_class(other).Options)}
    if not isinstance(keys, Mapping):
        raise ValueError(f"sift.{other}={keys!r} is only read by sift.criterion={other!r}, not {name!r}")
    for key, value in keys.items():
        if key not in defaults or value != defaults[key]:
            raise ValueError(f"sift.{other}.{key}={value!r} is only read by sift.criterion={other!r}, not {name!r}")
