"""No process started by a test outlives it.

A run under the ``deepspeed`` launcher is a tree: runner -> per-node launcher -> ranks, and
``launch/run_group.sh`` even moves the launcher into a process group of its own. A timeout that
kills only the top of the tree (``subprocess.run(timeout=)``, ``os.killpg`` of the wrong group)
leaves ranks running a 10,000-step job on a 2-core machine: every later test then starves and the
suite never ends. So:

* the pytest process becomes a *child subreaper* (Linux ``prctl``): orphans of its children are
  re-parented to it instead of to init, so they stay visible as its descendants;
* every child a test starts through ``launcher.clean_env`` carries :data:`MARKER` in its environment,
  inherited by the whole tree;
* after each test, :func:`kill_marked_descendants` SIGKILLs and reaps every marked descendant still
  there. Unmarked ones (``torch.compile`` worker pools, say) are left alone;
* and :func:`remove_shm_buffers` deletes the 69 MB files that DeepSpeed's CPU all-reduce puts in
  /dev/shm (RAM) per rank and port and never deletes. ``sift_ds.initialize`` and the pretraining
  job remove their own (``sift_ds.shm``); runs killed before that and scripts that start DeepSpeed
  without sift_ds leave theirs, and a suite of runs on fresh ports would otherwise fill the RAM.
"""
import ctypes
import glob
import os

import psutil

from sift_ds.pretrain.stop_request import is_live
from sift_ds.shm import SHM_BUFFER

MARKER = "SIFT_DS_TEST_CHILD"
SHM_BUFFERS = SHM_BUFFER.format(uid="*", addr="*", port="*", rank="*")
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans; False where the OS has no such call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _marked(proc: psutil.Process) -> bool:
    try:
        return MARKER in proc.environ()
    except psutil.ZombieProcess:  # exited, not yet reaped: reaping it is all that is left to do
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def kill_marked_descendants(timeout: float = 10.0) -> list:
    """SIGKILL and reap the marked descendants of this process; returns ``"pid cmdline"`` of the live ones."""
    try:
        procs = [p for p in psutil.Process().children(recursive=True) if _marked(p)]
    except psutil.NoSuchProcess:
        return []
    live = []
    for proc in procs:
        try:
            if is_live(proc):
                live.append(f"{proc.pid} {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(procs, timeout=timeout)  # also reaps those that are our own children
    return live


def shm_buffers(since: float) -> list:
    """DeepSpeed CPU all-reduce files in /dev/shm changed at or after ``since`` (a ``time.time()``)."""
    found = []
    for path in glob.glob(SHM_BUFFERS):
        try:
            if os.stat(path).st_mtime >= since:
                found.append(path)
        except FileNotFoundError:
            continue
    return sorted(found)


def remove_shm_buffers(since: float) -> None:
    for path in shm_buffers(since):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
