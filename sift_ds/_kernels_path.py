"""``sift_ds.kernels`` from a bare checkout.

The repository keeps the Triton kernels in the top-level ``kernels/`` directory, which setup.py
installs as the subpackage ``sift_ds.kernels`` (never as a top-level ``kernels``: that name belongs
to an unrelated PyPI package). An installed or editable ``sift_ds`` finds it through the package
metadata; a bare checkout on ``PYTHONPATH`` (the multi-node way of docs/usage.md) does not, so this
registers ``<checkout>/kernels`` as ``sift_ds.kernels`` before anything imports it.
"""
from __future__ import annotations

import importlib.util
import os
import sys

PACKAGE = "sift_ds"


def register_checkout_kernels() -> None:
    name = f"{PACKAGE}.kernels"
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return  # installed / editable: the package metadata maps it already
    here = os.path.dirname(os.path.abspath(__file__))
    directory = os.path.join(os.path.dirname(here), "kernels")
    init = os.path.join(directory, "__init__.py")
    if not os.path.isfile(init):
        raise ImportError(f"{name} not found: neither installed nor at {directory} (a sift_ds checkout)")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[directory])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
