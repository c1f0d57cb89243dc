"""The process guard: a run's orphans are found and killed after the test; other children are not."""
import os
import subprocess
import sys
import time

import psutil
import pytest

from launcher import clean_env, run_reporting_hangs
from process_guard import become_subreaper, kill_marked_descendants


def _orphan(env) -> int:
    """Start ``sleep`` as an orphan (its parent shell exits at once) and return its pid."""
    out = subprocess.run(["bash", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], env=env, capture_output=True,
                         text=True, check=True, timeout=30)
    return int(out.stdout.strip())


def test_orphans_of_a_marked_run_are_reparented_and_killed():
    if not become_subreaper():  # conftest asked already; asking again is harmless
        pytest.skip("no child subreaper on this OS (Linux prctl): orphans go to init, out of the guard's reach")
    marked = _orphan(clean_env())
    unmarked_env = {k: v for k, v in clean_env().items() if k != "SIFT_DS_TEST_CHILD"}
    bystander = subprocess.Popen(["sleep", "300"], env=unmarked_env)
    try:
        assert psutil.Process(marked).ppid() == os.getpid()  # re-parented to pytest, not to init
        killed = kill_marked_descendants()
        assert [int(k.split()[0]) for k in killed] == [marked]
        deadline = time.time() + 10
        while psutil.pid_exists(marked) and time.time() < deadline:
            time.sleep(0.05)
        assert not psutil.pid_exists(marked)  # killed and reaped, no zombie left
        assert bystander.poll() is None  # not ours to kill
    finally:
        bystander.kill()
        bystander.wait()


def test_a_run_that_hangs_fails_with_every_process_stack_and_its_output():
    """A parent and its child that never end: the failure shows the output so far and where each waits."""
    code = ("import subprocess, sys, time\n"
            "print('started', flush=True)\n"
            "subprocess.Popen([sys.executable, '-c', 'import time\\ndef waits_in_child(): time.sleep(300)\\nwaits_in_child()'])\n"
            "def waits_in_parent(): time.sleep(300)\n"
            "waits_in_parent()\n")
    with pytest.raises(AssertionError) as failure:
        run_reporting_hangs([sys.executable, "-c", code], clean_env(), timeout=4)
    report = str(failure.value)
    assert "did not end in 4 s" in report and "started" in report
    assert "waits_in_parent" in report and "waits_in_child" in report  # both processes' stacks
    assert kill_marked_descendants() == []  # nothing left running
