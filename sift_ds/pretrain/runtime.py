"""Process-level plumbing of the pretraining job: the process group, logging, each node's first rank
going first on shared caches, and SIGTERM as a request to checkpoint and stop."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from typing import Iterator

import datasets
import deepspeed
import torch.distributed as dist


def init_distributed() -> None:
    """``deepspeed.init_distributed``; a plain ``python`` start becomes a world of one."""
    if "WORLD_SIZE" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))
    deepspeed.init_distributed(verbose=False)


def configure_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="[%(asctime)s] [%(name)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sift_ds").setLevel(level)
    if rank != 0:
        datasets.disable_progress_bars()


@contextlib.contextmanager
def main_process_first(local: bool = True) -> Iterator[None]:
    """Rank 0 (of each node when ``local``) runs the block first and fills the ``datasets`` cache;
    the other ranks then run it and read the cache (``TrainingArguments.main_process_first``)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        yield
        return
    rank = int(os.environ.get("LOCAL_RANK", dist.get_rank())) if local else dist.get_rank()
    if rank != 0:
        dist.barrier()
    try:
        yield
    finally:
        if rank == 0:
            dist.barrier()


class StopSignal:
    """SIGTERM (Slurm pre-emption, the DeepSpeed launcher's shutdown) asks for a checkpoint and a
    clean exit at the next step boundary instead of killing the step."""

    def __init__(self):
        self.received = False
        self._previous = None

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.received = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
