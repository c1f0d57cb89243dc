import os
import socket

import pytest
import torch

# DeepSpeed picks its accelerator at import: use the CPU one unless a GPU is present.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (DeepSpeed refuses fp16 on CPU)")
