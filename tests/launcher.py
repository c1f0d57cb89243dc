"""Shared test helpers: the repo root, free ports, and real runs under the ``deepspeed`` launcher.

Self-contained on purpose: under ``pytest tests benchmarks`` the module name ``conftest`` can
resolve to benchmarks/conftest.py, so test modules import from here, never from ``conftest``.
"""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from process_guard import MARKER
from sift_ds.ports import free_port  # noqa: F401 - the tests' rendezvous ports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEPSPEED = os.path.join(os.path.dirname(sys.executable), "deepspeed")
if not os.path.exists(DEEPSPEED):  # DeepSpeed installed apart from this Python (pip --target): its launcher on PATH
    DEEPSPEED = shutil.which("deepspeed") or DEEPSPEED
CHILD_SITE = os.path.join(REPO, "tests", "child_site")  # sitecustomize.py: children skip the exit-time GC walk
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (DeepSpeed refuses fp16 on CPU)")


def clean_env(**extra) -> dict:
    """Environment for a child run: CPU accelerator unless a GPU is present, one thread per rank, no
    torch.distributed variables left over from in-process tests, the mark by which the process
    guard (tests/conftest.py) kills whatever of the run is still alive when the test ends, and
    tests/child_site last on PYTHONPATH (see its sitecustomize.py; a test's own sitecustomize.py in a
    folder before it wins)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **{MARKER: "1"}, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), CHILD_SITE) if p)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    for key in DIST_VARS:
        env.pop(key, None)
    return env


def run_deepspeed(script, args=(), num_gpus=2, timeout=600, env=None, check=True) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus N script ARGS`` (gloo on the CPU); with ``check``, fails showing the output."""
    cmd = [DEEPSPEED, "--num_gpus", str(num_gpus), "--master_port", str(free_port()), str(script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(**(env or {})), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc
