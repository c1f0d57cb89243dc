"""Each front-end refuses, at start-up and in one line, a dependency older than setup.py's floor (the
oldest release `make test-oldest` runs the smoke set with): below it, a front-end fails later or, worse,
trains without selecting (an older ``transformers.Trainer`` never calls the hooks ``SiftTrainer``
overrides, and trains on the whole gross batch). The floors are read from the installed package's
metadata, so setup.py stays their one home; a checkout on PYTHONPATH (no metadata) is not checked.

The HF front-end also checks the hooks themselves, by name and parameters, on the Trainer class, and
the front-ends that need both torch and transformers that this transformers uses this torch (each
transformers release disables a torch below its own floor, which can be above setup.py's).
"""
from __future__ import annotations

import importlib.metadata
import inspect
from typing import Dict, Iterable, Optional

from packaging.requirements import Requirement
from packaging.version import Version
from transformers.utils import import_utils as transformers_imports

DISTRIBUTION = "sift_ds"
# Trainer methods SiftTrainer overrides -> the parameters it relies on: a Trainer without one of them
# would never call the override (or call it differently), and the selection would be skipped.
TRAINER_HOOKS = {
    "get_batch_samples": ("epoch_iterator", "num_batches", "device"),
    "compute_loss": ("model", "inputs", "return_outputs", "num_items_in_batch"),
    "get_train_dataloader": (),
    "evaluation_loop": ("dataloader", "metric_key_prefix"),
    "log": ("logs", "start_time"),
    "call_model_init": ("trial",),
}


class UnsupportedDependency(ValueError):
    """An installed dependency older than setup.py's floor, or a Trainer without SiftTrainer's hooks."""


def floors() -> Dict[str, Version]:
    """setup.py's lower bound (``>=``) of every requirement, extras included, by normalised name
    (empty when sift_ds has no installed metadata)."""
    try:
        requirements = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    found = {}
    for line in requirements:
        requirement = Requirement(line)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                found[canonical(requirement.name)] = Version(spec.version)
    return found


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_version(package: str) -> Optional[Version]:
    try:
        return Version(importlib.metadata.version(package))
    except importlib.metadata.PackageNotFoundError:
        return None


def require(packages: Iterable[str], front_end: str) -> None:
    """UnsupportedDependency naming the first of ``packages`` that is installed below its floor."""
    known = floors()
    for package in packages:
        floor, have = known.get(canonical(package)), installed_version(package)
        if floor is not None and have is not None and have < floor:
            raise UnsupportedDependency(
                f"{front_end} needs {package} >= {floor} (setup.py; the oldest release tested), but {have} is "
                f"installed: pip install '{package}>={floor}'")
    if "torch" in packages and "transformers" in packages:
        require_torch_for_transformers(front_end)


def require_torch_for_transformers(front_end: str) -> None:
    """UnsupportedDependency when the installed transformers does not use the installed torch (each
    transformers release disables a torch below its own floor, with a log line, and every model class
    then fails far from the cause)."""
    if installed_version("torch") is not None and not transformers_imports.is_torch_available():
        raise UnsupportedDependency(
            f"{front_end}: transformers {installed_version('transformers')} does not use torch "
            f"{installed_version('torch')} (it needs a newer torch): upgrade torch, or install an older transformers "
            f"(>= {floors().get('transformers', 'the floor in setup.py')})")


def require_trainer_hooks(trainer_class, front_end: str = "SiftTrainer") -> None:
    """UnsupportedDependency when ``trainer_class`` (transformers' Trainer) lacks a hook of
    ``TRAINER_HOOKS`` or one of its parameters: the selection would silently never run."""
    missing = []
    for name, parameters in TRAINER_HOOKS.items():
        method = getattr(trainer_class, name, None)
        have = set(inspect.signature(method).parameters) if callable(method) else None
        if have is None or not set(parameters) <= have:
            missing.append(f"{name}({', '.join(parameters)})")
    if missing:
        version = installed_version("transformers")
        raise UnsupportedDependency(
            f"{front_end}: transformers {version}'s Trainer has no {', '.join(missing)}, which {front_end} overrides "
            f"to select the rows it trains on; without it Trainer would train on every row, unselected: install "
            f"transformers >= {floors().get('transformers', 'the floor in setup.py')}")
