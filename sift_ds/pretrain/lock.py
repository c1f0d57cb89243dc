"""The output directory's lock: one live job per output directory.

Rank 0 of a job holds an exclusive ``flock`` on ``<output_dir>/.lock`` for the job's lifetime (the
other ranks take none, so the ranks of one job never lock each other out). The kernel releases the
lock when the process dies, however it dies, so a crashed or killed job never leaves a stale lock;
a second job started on the same directory while the first lives (a resubmission racing an
orphaned rank 0, say) stops with one line naming the holder. On a shared file system the lock is
as good as its ``flock``: NFS (v4) and local file systems honour it; Lustre needs the ``flock``
mount option.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from typing import IO, List

LOCK_FILE = ".lock"
_HELD: List[IO[str]] = []  # open lock files of this process (closing one releases its lock)


def lock_output_dir(output_dir: str) -> None:
    """Take the output directory's lock for this process's lifetime; ValueError (one line) naming
    the live holder when another process has it."""
    path = os.path.join(output_dir, LOCK_FILE)
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "a process"
        f.close()
        raise ValueError(f"--output_dir {output_dir} is in use by another live job ({holder}, holding {path}); "
                         "two jobs must not write one output directory: stop that job or choose another "
                         "--output_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    f.flush()
    _HELD.append(f)


def unlock_all() -> None:
    """Release this process's locks (the process's exit does it anyway)."""
    while _HELD:
        _HELD.pop().close()
