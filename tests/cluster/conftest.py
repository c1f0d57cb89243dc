"""`make test-cluster`: launches as users run them, on this machine (tests/cluster/daemons.py). Every test
here is marked ``cluster``, which `make test` deselects; the daemons start once per module."""
import pytest

from daemons import SLURM_TOOLS, SSH_TOOLS, require, start_slurm, start_sshd, stop


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: real multi-node launches on loopback (make test-cluster)")


def running(tmp_path_factory, tools, start, name):
    """``start(folder)``'s handle while its daemons run (skipped, or failed under CI=true, without ``tools``)."""
    require(tools)
    handle, procs = start(str(tmp_path_factory.mktemp(name)))
    yield handle
    stop(procs)


@pytest.fixture(scope="module")
def ssh_nodes(tmp_path_factory):
    yield from running(tmp_path_factory, SSH_TOOLS, start_sshd, "sshd")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    yield from running(tmp_path_factory, SLURM_TOOLS, start_slurm, "slurm")
