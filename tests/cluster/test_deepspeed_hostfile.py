"""DeepSpeed's multi-node launcher as docs/usage.md runs it: ``deepspeed --hostfile`` with two nodes,
127.0.0.1 and 127.0.0.2, one CPU rank each, which the runner reaches with pdsh over real ssh (a test
sshd with keys of its own; tests/cluster/daemons.py).

* The variables of ``.deepspeed_env`` in the current directory reach the rank on each node, and
  each rank runs in an ssh session to its own node's address.
* SIGINT to the ``deepspeed`` command alone, mid-run: DeepSpeed's runner stops pdsh and has every
  node's launcher terminated; both ranks, whose console (pdsh) is gone by then, finish their step,
  save one complete checkpoint at the last logged step and exit, and nothing of the job is left.
"""
import os
import signal
import subprocess
import time
import uuid

import psutil
import pytest

from launch_helpers import SCRIPT, metrics, records_written, small_config
from launcher import DEEPSPEED, REPO, clean_env, free_port
from process_guard import MARKER, is_live
from sift_ds.pretrain import manifest

pytestmark = pytest.mark.cluster
TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")


def rank_environments(output_dir, count: int, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ranks = [p for p in psutil.process_iter(["cmdline"]) if str(output_dir) in (p.info["cmdline"] or [])
                 and any(a.startswith("--local_rank") for a in p.info["cmdline"])]
        if len(ranks) == count:
            return ranks, [p.environ() for p in ranks]
        time.sleep(0.2)
    raise AssertionError(f"{count} ranks did not start")


def test_hostfile_over_ssh_carries_deepspeed_env_to_both_nodes_and_a_sigint_stops_both(ssh_nodes, tmp_path):
    out = tmp_path / "run"
    config = small_config(tmp_path, base="tiny_cpu_vanilla.json", max_steps=300)
    (tmp_path / "hostfile").write_text("127.0.0.1 slots=1\n127.0.0.2 slots=1\n")
    probe = uuid.uuid4().hex
    # What the ranks need and ssh does not carry: the runner forwards only a few variables itself.
    (tmp_path / ".deepspeed_env").write_text(
        f"SIFT_CLUSTER_PROBE={probe}\nDS_ACCELERATOR=cpu\nOMP_NUM_THREADS=1\nGLOO_SOCKET_IFNAME=lo\n"
        f"TORCH_EXTENSIONS_DIR={os.environ.get('TORCH_EXTENSIONS_DIR', '')}\n{MARKER}=1\n")
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        runner = subprocess.Popen(
            [DEEPSPEED, "--hostfile", "hostfile", "--no_ssh_check", "--master_addr", "127.0.0.1",
             "--master_port", str(free_port()), SCRIPT, "--ds_config", config, "--output_dir", str(out),
             "--tokenizer", TOKENIZER],
            cwd=tmp_path, env=clean_env(**ssh_nodes.pdsh_env()), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        ranks, environs = rank_environments(out, 2)
        nodes = {env["CROSS_RANK"]: env["SSH_CONNECTION"].split()[2] for env in environs}
        assert nodes == {"0": "127.0.0.1", "1": "127.0.0.2"}, nodes  # node rank -> the address ssh reached
        assert [env.get("SIFT_CLUSTER_PROBE") for env in environs] == [probe, probe]
        assert all(env["GLOO_SOCKET_IFNAME"] == "lo" for env in environs)

        deadline = time.time() + 240
        while records_written(out) < 2:
            assert runner.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        job = ranks + [rank.parent() for rank in ranks]  # and each node's launcher
        runner.send_signal(signal.SIGINT)
        runner.wait(timeout=60)
        deadline = time.time() + 120
        while any(is_live(p) for p in job) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(is_live(p) for p in job), f"still running after SIGINT\n{log_path.read_text()[-3000:]}"
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    last = metrics(out)[-1]["step"]
    assert 2 <= last < 300
    assert (out / "checkpoints" / "latest").read_text().strip() == f"global_step{last}"
    assert manifest.incomplete_reason(str(out / "checkpoints" / f"global_step{last}")) is None
