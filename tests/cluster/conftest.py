"""`make test-cluster`: launches as users run them, on this machine (tests/cluster/daemons.py). Every test
here is marked ``cluster``, which `make test` deselects; the daemons start once per module."""
import pytest

from daemons import SLURM_TOOLS, SSH_TOOLS, require, start_slurm, start_sshd, stop


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: real multi-node launches on loopback (make test-cluster)")


@pytest.fixture(scope="module")
def ssh_nodes(tmp_path_factory):
    require(SSH_TOOLS)
    nodes, procs = start_sshd(str(tmp_path_factory.mktemp("sshd")))
    yield nodes
    stop(procs)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    require(SLURM_TOOLS)
    cluster, procs = start_slurm(str(tmp_path_factory.mktemp("slurm")))
    yield cluster
    stop(procs)
