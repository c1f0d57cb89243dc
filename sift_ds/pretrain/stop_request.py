"""Stop requests of the pretraining loop: SIGTERM or SIGINT to a rank, or the end of a DeepSpeed launcher
process above it, ask for a checkpoint and a clean exit at the next step boundary instead of killing
the step.

Why the launchers are watched: a signal to the ``deepspeed`` command alone (``kill -INT <pid>``, a
scheduler's ``kill -TERM <pid>``) ends that process only. DeepSpeed's per-node launcher and the ranks
under it are re-parented and would train on to the end. So each rank watches the DeepSpeed processes
above it on its node (the per-node launcher ``deepspeed.launcher.launch`` and, when it runs on that
node, the ``deepspeed`` command) and takes the end of any of them as a stop request. ``psutil`` comes
with DeepSpeed, whose launcher uses it.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import List, Optional, Tuple

import psutil

logger = logging.getLogger(__name__)

POLL_S = 1.0  # how often a rank looks at its launchers
LAUNCHER_MODULES = ("deepspeed.launcher.launch", "deepspeed.launcher.runner")
RUNNER_COMMANDS = ("deepspeed", "ds")  # DeepSpeed's console scripts for the runner


def launcher_role(cmdline: List[str]) -> Optional[str]:
    """What a process of this command line is to the job: ``the per-node launcher``, ``the deepspeed
    command`` (the runner), or None when it is not a DeepSpeed launcher process."""
    head = cmdline[:4]
    if LAUNCHER_MODULES[0] in head:
        return "the per-node launcher"
    if LAUNCHER_MODULES[1] in head or any(os.path.basename(arg) in RUNNER_COMMANDS for arg in cmdline[:2]):
        return "the deepspeed command"
    return None


def launcher_processes(pid: Optional[int] = None) -> List[Tuple[psutil.Process, str]]:
    """The DeepSpeed launcher processes directly above ``pid`` (default: this process), nearest first,
    with their role; empty when the parent is none (a plain ``python`` start, torchrun, mpirun)."""
    found = []
    try:
        proc = psutil.Process(pid).parent()
        while proc is not None:
            role = launcher_role(proc.cmdline())
            if role is None:
                break
            found.append((proc, role))
            proc = proc.parent()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    return found


def is_live(proc: psutil.Process) -> bool:
    """Running and not a zombie (ended, not yet reaped); a process that ends between two questions is not live."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class StopRequest:
    """Collects the reasons to stop at the next step boundary: SIGTERM, SIGINT (a second SIGINT aborts at
    once, as usual, with ``KeyboardInterrupt``) or a launcher process above this rank that ended.
    ``reason`` is the first one seen (None until then); ``install`` / ``restore`` bracket the loop."""

    def __init__(self, poll_s: float = POLL_S):
        self.reason: Optional[str] = None
        self.poll_s = poll_s
        self._previous = {}
        self._sigints = 0
        self._stop_watching = threading.Event()
        self._watcher: Optional[threading.Thread] = None

    @property
    def received(self) -> bool:
        return self.reason is not None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass
        self.watch(launcher_processes())

    def watch(self, launchers: List[Tuple[psutil.Process, str]]) -> None:
        """The end of any of these ``(process, role)`` is a stop request (a thread looks every ``poll_s``)."""
        if launchers:
            self._stop_watching.clear()
            self._watcher = threading.Thread(target=self._watch, args=(launchers,), name="sift-launcher-watch",
                                             daemon=True)
            self._watcher.start()

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1:
                raise KeyboardInterrupt
        self.reason = self.reason or signal.Signals(signum).name

    def _watch(self, launchers: List[Tuple[psutil.Process, str]]) -> None:
        while not self._stop_watching.wait(self.poll_s):
            for proc, role in launchers:
                if not is_live(proc):
                    self.reason = self.reason or f"{role} (pid {proc.pid}) ended"
                    logger.warning("%s (pid %d) ended: this rank stops at the next step boundary with a checkpoint",
                                   role, proc.pid)
                    return

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)
        self._previous = {}
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2 * self.poll_s)
            self._watcher = None
