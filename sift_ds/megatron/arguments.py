"""``--sift-*`` command-line flags for Megatron's ``extra_args_provider``, generated from ``SiftConfig``.

Every ``SiftConfig`` field and registered criterion key ``f`` (``sift_ds.config.key_fields``) gets
``--sift-<f with dashes>`` (argparse dest ``sift_<f>``), with the field's help text, choices and type; the default is None, so that ``SiftConfig.from_megatron_args``
keeps the dataclass default for a flag not given. A new field gets its flag without an edit here.
"""
from __future__ import annotations

import argparse

from ..config import key_fields
from ..config_io import CLI_TYPES, field_kind

GROUP_TITLE = "SIFT (sample sifting via early exiting)"


def flag_of(field_name: str) -> str:
    """``keep_ratio`` -> ``--sift-keep-ratio``."""
    return "--sift-" + field_name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``--sift-*`` flags to ``parser`` and return it (Megatron's ``extra_args_provider`` contract)."""
    group = parser.add_argument_group(title=GROUP_TITLE)
    for name, f in key_fields():
        kind = field_kind(f)
        group.add_argument(
            flag_of(name),
            dest=f"sift_{name}",
            type=CLI_TYPES[kind],
            default=None,
            choices=f.metadata.get("choices"),
            metavar="BOOL" if kind == "bool" else None,
            help=f"{f.metadata['help']} (default: {f.default})",
        )
    return parser
