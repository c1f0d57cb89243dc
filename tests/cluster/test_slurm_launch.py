"""launch/slurm_pretrain.sh under a real one-node Slurm (munge, slurmctld, slurmd; tests/cluster/daemons.py),
with ``SIFT_LAUNCHER=srun`` and two CPU ranks on the node:

* SIGTERM to the batch script while it trains, as ``#SBATCH --signal=B:TERM@300`` sends it before the
  time limit (here ``scancel --batch --signal=TERM``): srun passes it to the node's task, every rank
  saves one complete checkpoint at the last logged step and exits, the job ends, no rank is left and
  the job's hostfile is gone;
* the same command submitted again continues the run (the script adds ``--resume auto``) to the end.
"""
import os
import subprocess
import time

import psutil
import pytest

from launch_helpers import metrics, records_written, small_config
from launcher import DEEPSPEED, REPO, clean_env, free_port
from process_guard import is_live
from sift_ds.pretrain import manifest

pytestmark = pytest.mark.cluster
SLURM_SCRIPT = os.path.join(REPO, "launch", "slurm_pretrain.sh")
TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")
STEPS = 60


def job_state(slurm, job_id: str) -> str:
    """The job's state while squeue knows it, "" once it has left the queue."""
    try:
        return slurm.run("squeue", "-h", "-j", job_id, "-o", "%T")
    except subprocess.CalledProcessError:  # an id already purged
        return ""


def wait_for_end(slurm, job_id: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while job_state(slurm, job_id) not in ("", "COMPLETED", "FAILED", "CANCELLED"):
        assert time.time() < deadline, f"job {job_id} still {job_state(slurm, job_id)}"
        time.sleep(0.5)


def test_slurm_script_saves_and_stops_every_rank_on_sigterm_and_resubmitting_finishes(slurm, tmp_path):
    out = tmp_path / "run"
    config = small_config(tmp_path, base="tiny_cpu_vanilla.json", max_steps=STEPS)
    # The script's `deepspeed` is this environment's, linked into a folder of its own: the environment's
    # bin folder first on PATH would also change the ninja DeepSpeed JIT-builds its op with (a rebuild).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "deepspeed").symlink_to(DEEPSPEED)
    env = clean_env(**slurm.env, SIFT_LAUNCHER="srun", GPUS_PER_NODE="2", GLOO_SOCKET_IFNAME="lo",
                    DS_ACCELERATOR="cpu", PATH=os.pathsep.join([str(bin_dir), os.environ["PATH"]]))
    env["MASTER_PORT"] = str(free_port())  # after clean_env, which drops the torch.distributed variables

    def submit() -> str:
        return subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out", SLURM_SCRIPT,
                               "--ds_config", config, "--output_dir", str(out), "--tokenizer", TOKENIZER],
                              cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.strip()

    first = submit()
    output = tmp_path / f"slurm-{first}.out"
    deadline = time.time() + 240
    while records_written(out) < 2:
        assert job_state(slurm, first) in ("PENDING", "RUNNING", "CONFIGURING") and time.time() < deadline, \
            output.read_text()[-3000:] if output.exists() else job_state(slurm, first)
        time.sleep(0.2)
    ranks = [p for p in psutil.process_iter(["cmdline"]) if str(out) in (p.info["cmdline"] or [])
             and any(a.startswith("--local_rank") for a in p.info["cmdline"])]
    assert len(ranks) == 2
    slurm.run("scancel", "--batch", "--signal=TERM", first)
    wait_for_end(slurm, first)
    log = output.read_text()
    alive = [p for p in ranks if is_live(p)]
    assert not alive, f"ranks left running: {alive}\n{log[-3000:]}"
    last = metrics(out)[-1]["step"]
    assert 2 <= last < STEPS, log[-3000:]
    assert f"stopped at step {last}: " in log, log[-3000:]  # SIGTERM, or the end of the deepspeed command seen first
    assert (out / "checkpoints" / "latest").read_text().strip() == f"global_step{last}"
    assert manifest.incomplete_reason(str(out / "checkpoints" / f"global_step{last}")) is None
    assert not os.path.exists(os.path.join(REPO, f"hostfile.{first}"))

    second = submit()
    wait_for_end(slurm, second)
    log = (tmp_path / f"slurm-{second}.out").read_text()
    assert f"resumed from {out}/checkpoints/global_step{last}" in log, log[-3000:]
    assert [r["step"] for r in metrics(out)] == list(range(1, STEPS + 1))
    assert (out / "final" / "config.json").exists(), log[-3000:]
