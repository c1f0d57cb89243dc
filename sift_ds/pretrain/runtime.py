"""Process-level plumbing of the pretraining job: the process group, logging, each node's first rank
going first on shared caches, and stale build locks in the torch extensions directory (a rank killed
while DeepSpeed JIT-built an op leaves one, and every later start then waits on it silently)."""
from __future__ import annotations

import contextlib
import datetime
import glob
import logging
import os
import time
from typing import Iterator, List

import datasets
import deepspeed
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.git_version_info import installed_ops
from torch.utils.cpp_extension import get_default_build_root

from ..ports import free_port
from ..shm import release_shm_buffer

STALE_LOCK_S = 600.0  # a JIT build lock older than this is reported
logger = logging.getLogger("sift_ds.pretrain")


def init_distributed(timeout_minutes: float = 30.0) -> None:
    """``deepspeed.init_distributed`` with a collective timeout of ``timeout_minutes`` (DeepSpeed's
    default is 10); a plain ``python`` start becomes a world of one. Each node's first rank says when
    DeepSpeed is about to JIT-build an op (``ops_to_build``), which is silent otherwise, and how long it took."""
    if "WORLD_SIZE" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    building = ops_to_build() if os.environ.get("LOCAL_RANK", "0") == "0" else []
    if building:
        logger.info("DeepSpeed is compiling its %s op for this machine (once, into %s; a few minutes on a small "
                    "CPU, during which nothing is printed) ...", ", ".join(building), build_root())
    start = time.perf_counter()
    deepspeed.init_distributed(verbose=False, timeout=datetime.timedelta(minutes=timeout_minutes))
    if building:
        logger.info("... compiled in %.0f s; later starts reuse it", time.perf_counter() - start)
    release_shm_buffer()  # now, not at sift_ds.initialize: a kill during data preparation leaks nothing


def build_root() -> str:
    """Where torch JIT-builds extensions: ``TORCH_EXTENSIONS_DIR`` or torch's default."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()


def ops_to_build() -> List[str]:
    """The DeepSpeed ops that the process-group start JIT-builds: on the CPU accelerator, the
    shared-memory all-reduce, unless installed with DeepSpeed or already built under ``build_root``
    (``<op>/<op>.so``, or ``<python>_<device>/<op>/<op>.so`` without TORCH_EXTENSIONS_DIR)."""
    if get_accelerator().device_name() != "cpu":
        return []
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or installed_ops.get(builder.NAME) or not deepspeed.ops.__compatible_ops__.get(builder.NAME):
        return []
    root, name = glob.escape(build_root()), builder.NAME
    built = glob.glob(os.path.join(root, name, name + ".so")) + glob.glob(os.path.join(root, "*", name, name + ".so"))
    return [] if built else [name]


def stale_build_locks(root: str = "", min_age_s: float = STALE_LOCK_S) -> List[str]:
    """``lock`` files of torch extension builds older than ``min_age_s`` (a build killed mid-way,
    which torch waits on forever): ``<root>/<op>/lock`` or ``<root>/py311_cpu/<op>/lock``, where root
    is ``TORCH_EXTENSIONS_DIR`` or torch's default."""
    root = root or build_root()
    now, found = time.time(), []
    for pattern in ("*/lock", "*/*/lock"):
        for lock in sorted(glob.glob(os.path.join(glob.escape(root), pattern))):
            try:
                if now - os.path.getmtime(lock) > min_age_s:
                    found.append(lock)
            except OSError:
                continue
    return found


def warn_stale_build_locks(logger: logging.Logger) -> None:
    for lock in stale_build_locks():
        logger.warning("stale torch extension build lock %s (%.0f min old): a build was killed; if no build is "
                       "running, delete it, or the op build (and this run) waits forever", lock,
                       (time.time() - os.path.getmtime(lock)) / 60)


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
