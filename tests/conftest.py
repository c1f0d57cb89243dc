import os
import shutil
import sys
import time
import warnings

import pytest
import torch

from launcher import free_port
from process_guard import become_subreaper, kill_marked_descendants, remove_shm_buffers, stacks_folder

# DeepSpeed picks its accelerator at import: use the CPU one unless a GPU is present.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

# Under pytest-xdist (make test runs two workers) each worker gets one of the two cores: torch's own
# thread pool would otherwise put two threads per worker on them and spin against the other worker.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Orphaned ranks of a failed or timed-out run are re-parented to pytest, so the guard below finds them.
become_subreaper()


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Whatever a test started (launchers, ranks, their orphans, DeepSpeed's /dev/shm files) is gone
    before the next test starts."""
    start = time.time() - 1.0  # file times can lag the clock slightly
    yield
    leftovers = kill_marked_descendants()
    remove_shm_buffers(since=start)
    if leftovers:
        warnings.warn(f"killed {len(leftovers)} process(es) the test left running: {leftovers[:4]}")


@pytest.fixture(autouse=True)
def no_stale_world_group_clone():
    """A test that ends the process group in process (run_mlm_sift.py's main calls the Trainer's
    end_training, as a script's last line should) leaves DeepSpeed's cached clone of the world group
    naming a group that no longer exists; the next in-process engine would fail to broadcast with it.
    DeepSpeed clones the group again when its cache is empty."""
    yield
    import torch.distributed as dist

    groups = sys.modules.get("deepspeed.utils.groups")  # only if a test imported DeepSpeed
    if groups is not None and not dist.is_initialized():
        groups._WORLD_GROUP = None


@pytest.fixture(scope="session")
def single_rank_dist():
    """torch.distributed env for a 1-rank in-process DeepSpeed engine (gloo on CPU)."""
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def pytest_sessionfinish(session, exitstatus):
    """The children's stack-dump files (tests/child_site/sitecustomize.py) go with the session."""
    shutil.rmtree(stacks_folder(), ignore_errors=True)
