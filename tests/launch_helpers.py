"""Helpers for the tests that run launch/pretrain_bert.py: import it, write configs, start real runs."""
import importlib.util
import json
import os
import socket
import subprocess
import sys

# Self-contained on purpose: under `pytest tests benchmarks` the module name `conftest` can resolve
# to benchmarks/conftest.py, so nothing here imports from it.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "pretrain_bert.py")
CONFIGS = os.path.join(REPO, "ds_configs")
DEEPSPEED = os.path.join(os.path.dirname(sys.executable), "deepspeed")


def load_cli():
    spec = importlib.util.spec_from_file_location("pretrain_bert_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_config(name: str) -> dict:
    with open(os.path.join(CONFIGS, name), encoding="utf-8") as f:
        return json.load(f)


def write_config(path, config: dict) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return str(path)


def cpu_env(**extra) -> dict:
    """Environment for a plain ``python`` run: CPU accelerator, and no torch.distributed variables
    left over from in-process tests (the script then makes a world of one on a free port)."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_python(args, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python launch/pretrain_bert.py ARGS`` as one process."""
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=REPO, env=cpu_env(), capture_output=True,
                          text=True, timeout=timeout)


def pretrain_2_ranks(args, timeout: int = 300) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus 2 launch/pretrain_bert.py ARGS`` on the CPU (gloo); fails with the output."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(port), SCRIPT, *map(str, args)]
    proc = subprocess.run(command, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc


def metrics(output_dir) -> list:
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def small_config(tmp_path, base: str = "tiny_cpu_sift.json", name: str = "cfg.json", **pretrain) -> str:
    """The tiny CPU config, shrunk for tests (seq 64, small vocab, schedule from --max_steps)."""
    config = read_config(base)
    config["scheduler"]["params"].update(total_num_steps="auto", warmup_num_steps=2)
    config["pretrain"].update({"seq_len": 64, "vocab_size": 1000, "log_interval": 1, "eval_interval": 0,
                               "save_interval": 0, "cache_dir": str(tmp_path / "cache"), **pretrain})
    return write_config(tmp_path / name, config)
