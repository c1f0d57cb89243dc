"""Imported at start-up by every Python process a test starts (``launcher.clean_env`` puts this folder
last on PYTHONPATH, so a test's own sitecustomize.py before it wins): the deepspeed runner, its
launcher, compare.py, and the ranks.

At exit CPython's last garbage collection walks the whole heap that torch and DeepSpeed built, 1-2 s
per process for memory the OS reclaims anyway; a 2-rank run has four such processes. Freezing the
heap in the last exit handler skips that walk. Objects are still released by reference counting;
only garbage in reference cycles is left to the OS, so a file that the code under test leaves open
inside a cycle would lose its buffer here, which makes the tests stricter than a normal exit, never
laxer.

Not in a process that loaded Triton's extension: its objects that cycles still hold at shutdown
would make nanobind print a "leaked instance" report on stderr, which tests of one-line errors read.

Where the test run names a folder in ``SIFT_DS_TEST_STACKS``, SIGUSR1 makes the process write every
thread's Python stack to ``<folder>/<pid>.txt``: a test whose run hangs shows where each rank waits
(``launcher.run_deepspeed``)."""
import atexit
import faulthandler
import gc
import os
import signal
import sys

_stacks_folder = os.environ.get("SIFT_DS_TEST_STACKS")
if _stacks_folder and os.path.isdir(_stacks_folder):
    _stacks_file = open(os.path.join(_stacks_folder, f"{os.getpid()}.txt"), "w")  # open for the process's life
    faulthandler.register(signal.SIGUSR1, file=_stacks_file, all_threads=True)


def skip_the_final_collection() -> None:
    if not any(name.startswith("triton._C") for name in sys.modules):
        gc.freeze()


atexit.register(skip_the_final_collection)  # registered first, so it runs after every other exit handler
