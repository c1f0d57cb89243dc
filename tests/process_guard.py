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
import signal
import tempfile
import time

import psutil

from sift_ds.pretrain.stop_request import is_live
from sift_ds.shm import SHM_BUFFER

MARKER = "SIFT_DS_TEST_CHILD"
STACKS = "SIFT_DS_TEST_STACKS"  # tests/child_site/sitecustomize.py: where SIGUSR1 writes a process's stacks
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


def _port_of(path: str) -> int:
    """The rendezvous port in a workspace file's name (its second-last field), or -1."""
    try:
        return int(os.path.basename(path).rsplit("_", 2)[-2])
    except (ValueError, IndexError):
        return -1


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


def _listening_ports() -> set:
    """TCP ports with a listening socket on this machine now (a live process group's rendezvous)."""
    try:
        return {c.laddr.port for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    except (psutil.AccessDenied, OSError):
        return set()


def remove_shm_buffers(since: float) -> None:
    """Delete the workspace files changed since ``since``, except those of a process group whose
    rendezvous port still listens: under ``pytest -n`` another worker's run may be starting on it."""
    found = shm_buffers(since)
    live = _listening_ports() if found else set()
    for path in found:
        if _port_of(path) in live:
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def stacks_folder() -> str:
    """This test process's folder for its children's stack dumps (made on first use)."""
    folder = os.path.join(tempfile.gettempdir(), f"sift_ds_test_stacks_{os.getpid()}")
    os.makedirs(folder, exist_ok=True)
    return folder


def dump_stacks(wait: float = 3.0) -> str:
    """The Python stacks of every live marked descendant (SIGUSR1, then what each wrote), for the
    report of a run that hung; empty where none answered."""
    try:
        procs = [p for p in psutil.Process().children(recursive=True) if _marked(p) and is_live(p)]
    except psutil.NoSuchProcess:
        return ""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGUSR1)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    time.sleep(wait)
    parts = []
    for proc in procs:
        path = os.path.join(stacks_folder(), f"{proc.pid}.txt")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read().strip()
            cmd = " ".join(proc.cmdline())[:160]
        except (OSError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if text:
            parts.append(f"--- stacks of {proc.pid} {cmd}\n{text[-6000:]}")
    return "\n".join(parts)
