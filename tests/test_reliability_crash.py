"""Issue 8, sections 1 and 3, with real processes under the DeepSpeed launcher (2 CPU ranks):

* a rank SIGKILLed while the checkpoint is being written, at several points, never leaves a `latest`
  that names an incomplete checkpoint, and `--resume auto` continues from the last complete one and
  finishes;
* SIGTERM to the Slurm script (as Slurm sends it) reaches every rank through `scancel --signal` (not
  srun, which SIGKILLs its tasks on SIGTERM) and launch/run_group.sh: the ranks save a complete
  checkpoint and exit, and none is left running (stand-ins for srun, scancel and scontrol here; the
  real Slurm in tests/cluster).

The kills come from a ``sitecustomize`` on the ranks' PYTHONPATH that SIGKILLs its own process in the
middle of one file write, chosen by ``SIFT_TEST_KILL=rank:tag:file:how``.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import psutil

from launch_helpers import SCRIPT, metrics, records_written, small_config
from launcher import DEEPSPEED, REPO, clean_env, free_port, run_deepspeed
from process_guard import is_live
from sift_ds.pretrain import manifest

KILLER = '''
import os, signal
_rank, _tag, _file, _how = os.environ["SIFT_TEST_KILL"].split(":")
if os.environ.get("RANK") == _rank:
    def _hit(path):
        path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
        return _tag in path and _file in os.path.basename(path)
    if _how == "torch.save":  # half of the file written, then killed
        import torch
        _save = torch.save
        def _killing_save(obj, f, *args, **kwargs):
            if _hit(f):
                with open(f, "wb") as out:
                    out.write(b"PK" + b"\\0" * 64)
                os.kill(os.getpid(), signal.SIGKILL)
            return _save(obj, f, *args, **kwargs)
        torch.save = _killing_save
    elif _how == "replace":  # the file is complete under its temporary name, killed before the rename
        _replace = os.replace
        def _killing_replace(src, dst, *args, **kwargs):
            if _hit(dst):
                os.kill(os.getpid(), signal.SIGKILL)
            return _replace(src, dst, *args, **kwargs)
        os.replace = _killing_replace
'''

STEPS = 6


def latest(out) -> str:
    return (out / "checkpoints" / "latest").read_text().strip()


def pretrain(tmp_path, args, kill=None):
    env = {"DS_ACCELERATOR": "cpu"}
    if kill:
        hooks = tmp_path / "kill_hooks"
        hooks.mkdir(exist_ok=True)
        (hooks / "sitecustomize.py").write_text(KILLER)
        env.update(SIFT_TEST_KILL=kill, PYTHONPATH=os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])))
    return run_deepspeed(SCRIPT, args, num_gpus=2, timeout=300, env=env, check=kill is None)


def test_a_rank_killed_while_saving_never_makes_latest_incomplete(tmp_path):
    out = tmp_path / "run"
    config = small_config(tmp_path, base="tiny_cpu_vanilla.json", max_steps=STEPS, save_interval=2)
    common = ["--ds_config", config, "--output_dir", out]
    kills = [
        ("1:global_step4:optim_states:torch.save", "rank 1 in the middle of its ZeRO optimizer shard"),
        ("0:global_step4:sift_manifest.json:replace", "rank 0 with every file written, before the manifest's rename"),
        ("0:global_step4:model_states:torch.save", "rank 0 in the middle of the model states"),
    ]
    for attempt, (kill, what) in enumerate(kills):
        proc = pretrain(tmp_path, common + (["--resume", "auto"] if attempt else []), kill=kill)
        log = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"{what}: the run was not killed\n{log[-3000:]}"
        assert latest(out) == "global_step2", what
        assert manifest.incomplete_reason(str(out / "checkpoints" / "global_step4")) is not None, what
        if attempt:
            assert f"resumed from {out}/checkpoints/global_step2" in log, log[-3000:]
            assert f"skipped incomplete checkpoint {out}/checkpoints/global_step4" in log, log[-3000:]

    done = pretrain(tmp_path, common + ["--resume", "auto"])
    log = done.stdout + done.stderr
    assert f"resumed from {out}/checkpoints/global_step2" in log
    assert latest(out) == f"global_step{STEPS}"
    assert manifest.incomplete_reason(str(out / "checkpoints" / f"global_step{STEPS}")) is None
    assert [r["step"] for r in metrics(out)] == list(range(1, STEPS + 1))
    assert (out / "final" / "config.json").exists()


FAKE_SRUN = """#!/bin/bash
# Test stand-in for srun on one node: runs the task with SLURM_NODEID=0 (its pid in task.pid, for scancel);
# SIGTERM to it SIGKILLs the task, as the real srun does ("forcing job termination").
while [[ "$1" == --* ]]; do shift; done
SLURM_NODEID=0 "$@" &
task=$!
echo "$task" > "$(dirname "$0")/task.pid"
trap 'kill -KILL "$task"' TERM
wait "$task"; status=$?
while kill -0 "$task" 2>/dev/null; do wait "$task"; status=$?; done
exit "$status"
"""
# ... and for `scancel --signal=SIG <job>`, which signals the job step's task (tests/cluster has the real Slurm).
FAKE_SCANCEL = """#!/bin/bash
kill -s "${1#--signal=}" "$(cat "$(dirname "$0")/task.pid")"
"""


def test_sigterm_to_the_slurm_script_reaches_every_rank_and_leaves_no_orphan(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scancel").write_text(FAKE_SCANCEL)
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    for tool in ("srun", "scancel", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    # The script's `deepspeed` is this environment's, linked here: putting the environment's bin folder
    # first would also change the ninja that DeepSpeed JIT-builds its ops with, and a ninja of another
    # version reads the build log as changed commands and rebuilds them (here and in the next test).
    (bin_dir / "deepspeed").symlink_to(DEEPSPEED)
    out = tmp_path / "run"
    config = small_config(tmp_path, base="tiny_cpu_vanilla.json", max_steps=10_000)
    job_id = f"test{os.getpid()}"
    env = clean_env(DS_ACCELERATOR="cpu", GPUS_PER_NODE="2", SLURM_JOB_ID=job_id,
                    SLURM_JOB_NODELIST="localhost", SLURM_SUBMIT_DIR=REPO,
                    PATH=os.pathsep.join([str(bin_dir), os.environ["PATH"]]))
    env["MASTER_PORT"] = str(free_port())  # after clean_env, which drops the torch.distributed variables
    assert shutil.which("ninja", path=env["PATH"]) == shutil.which("ninja")
    proc = subprocess.Popen(["bash", os.path.join(REPO, "launch", "slurm_pretrain.sh"), "--ds_config", config,
                             "--output_dir", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while records_written(out) < 2:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.2)
        ranks = [p for p in psutil.process_iter(["cmdline"]) if str(out) in (p.info["cmdline"] or [])
                 and any(a.startswith("--local_rank") for a in p.info["cmdline"])]
        assert len(ranks) == 2
        proc.send_signal(signal.SIGTERM)  # what `#SBATCH --signal=B:TERM@300` does
        output, _ = proc.communicate(timeout=120)
        alive = [p for p in ranks if is_live(p)]
        assert not alive, f"orphaned ranks {alive}\n{output[-3000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    last = metrics(out)[-1]["step"]
    assert "stopped at step" in output and "SIGTERM" in output, output[-3000:]
    assert latest(out) == f"global_step{last}", output[-3000:]
    assert manifest.incomplete_reason(str(out / "checkpoints" / f"global_step{last}")) is None
    assert not os.path.exists(os.path.join(REPO, f"hostfile.{job_id}"))
