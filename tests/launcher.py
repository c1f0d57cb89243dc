"""Run a script under the real ``deepspeed`` launcher (N CPU ranks, gloo) from a test."""
import os
import subprocess
import sys

from conftest import REPO, free_port


def run_deepspeed(script, args=(), num_gpus=2, timeout=600, env=None, check=True):
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [launcher, "--num_gpus", str(num_gpus), "--master_port", str(free_port()), script, *map(str, args)]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    if "CUDA_VISIBLE_DEVICES" not in full_env and full_env.get("DS_ACCELERATOR") == "cpu":
        full_env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc
