"""DeepSpeed's CPU all-reduce workspace files, removed once the process group is up.

With all ranks on one node, DeepSpeed's CPU backend (``deepspeed_shm_comm``) gives each rank a
69 MB workspace file in /dev/shm, which is RAM, named by uid, master address, port and rank
(deepspeed/ops/csrc/cpu/comm/shm.cpp). Every peer maps it while the process group starts, and
DeepSpeed never unlinks it: runs on new ports fill the machine's RAM. After a barrier every rank
holds its peers' mappings, which outlive the name, so unlinking then costs nothing and leaves
nothing behind, even after a kill.
"""
from __future__ import annotations

import contextlib
import os

import torch.distributed as dist

SHM_BUFFER = "/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}"
_released = set()  # (address, port) of the process groups already handled


def release_shm_buffer() -> None:
    """Unlink this rank's workspace file (a collective: every rank calls it; once per process group,
    later calls return at once). Nothing to do on a GPU backend or across nodes: no file exists."""
    if not dist.is_initialized():
        return
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    if (addr, port) in _released:
        return
    _released.add((addr, port))
    if dist.get_world_size() > 1:
        dist.barrier()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SHM_BUFFER.format(uid=os.getuid(), addr=addr, port=port, rank=dist.get_rank()))
