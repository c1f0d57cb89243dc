"""Stop requests of the pretraining loop: SIGTERM or SIGINT to a rank, or the end of a DeepSpeed launcher
process above it, ask for a checkpoint and a clean exit at the next step boundary instead of killing
the step.

Why the launchers are watched: a signal to the ``deepspeed`` command alone (``kill -INT <pid>``, a
scheduler's ``kill -TERM <pid>``) ends that process only. DeepSpeed's per-node launcher and the ranks
under it are re-parented and would train on to the end. So each rank watches the DeepSpeed processes
above it on its node (the per-node launcher ``deepspeed.launcher.launch`` and, when it runs on that
node, the ``deepspeed`` command) and takes the end of any of them, seen at a step boundary, as a stop
request. ``psutil`` comes with DeepSpeed, whose launcher uses it.
"""
from __future__ import annotations

import os
import signal
from typing import List, Optional, Tuple

import psutil

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
    once, as usual, with ``KeyboardInterrupt``) or a launcher process above this rank that has ended.
    ``install`` / ``restore`` bracket the loop; ``poll()`` at each step boundary gives the reason, the
    first one seen, or None."""

    def __init__(self):
        self.reason: Optional[str] = None
        self._previous = {}
        self._sigints = 0
        self._launchers: List[Tuple[psutil.Process, str]] = []

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass
        self.watch(launcher_processes())

    def watch(self, launchers: List[Tuple[psutil.Process, str]]) -> None:
        """The end of any of these ``(process, role)`` is a stop request."""
        self._launchers = list(launchers)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1:
                raise KeyboardInterrupt
        self.reason = self.reason or signal.Signals(signum).name

    def poll(self) -> Optional[str]:
        """The reason to stop, looking at the watched launchers now (a few microseconds per process)."""
        if self.reason is None:
            for proc, role in self._launchers:
                if not is_live(proc):
                    self.reason = f"{role} (pid {proc.pid}) ended"
                    break
        return self.reason

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)
        self._previous = {}
