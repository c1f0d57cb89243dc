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

from process_guard import MARKER, STACKS, dump_stacks, kill_marked_descendants, stacks_folder
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
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **{MARKER: "1", STACKS: stacks_folder()}, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), CHILD_SITE) if p)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    for key in DIST_VARS:
        env.pop(key, None)
    return env


def run_reporting_hangs(cmd, env, timeout) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` from the repository root; a run that does
    not end in ``timeout`` seconds fails with every marked process's Python stacks and the output so far."""
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as popen:
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stacks = dump_stacks()
            popen.kill()
            kill_marked_descendants()  # the ranks hold the output pipes open
            out, err = popen.communicate()
            raise AssertionError(f"{' '.join(map(str, cmd))} did not end in {timeout} s\n--- stdout\n{out[-6000:]}\n"
                                 f"--- stderr\n{err[-6000:]}\n{stacks}") from None
    return subprocess.CompletedProcess(cmd, popen.returncode, out, err)


def run_deepspeed(script, args=(), num_gpus=2, timeout=600, env=None, check=True) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus N script ARGS`` (gloo on the CPU); with ``check``, fails showing the output."""
    cmd = [DEEPSPEED, "--num_gpus", str(num_gpus), "--master_port", str(free_port()), str(script), *map(str, args)]
    proc = run_reporting_hangs(cmd, clean_env(**(env or {})), timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc
