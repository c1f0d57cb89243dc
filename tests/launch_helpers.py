"""Helpers for the tests that run launch/pretrain_bert.py: import it, write configs, start real runs."""
import importlib.util
import json
import os
import subprocess
import sys

from launcher import REPO, clean_env, run_deepspeed

SCRIPT = os.path.join(REPO, "launch", "pretrain_bert.py")
GPT_SCRIPT = os.path.join(REPO, "launch", "pretrain_gpt.py")
CONFIGS = os.path.join(REPO, "ds_configs")


def load_cli(script: str = SCRIPT):
    spec = importlib.util.spec_from_file_location(os.path.basename(script)[:-3] + "_cli", script)
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
    """Environment for a plain ``python`` run: the script then makes a world of one on a free port."""
    return clean_env(DS_ACCELERATOR="cpu", **extra)


def run_python(args, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python launch/pretrain_bert.py ARGS`` as one process."""
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=REPO, env=cpu_env(), capture_output=True,
                          text=True, timeout=timeout)


def pretrain_2_ranks(args, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus 2 launch/pretrain_bert.py ARGS`` on the CPU (gloo); with ``check``, fails with the output."""
    return run_deepspeed(SCRIPT, args, num_gpus=2, timeout=timeout, env={"DS_ACCELERATOR": "cpu"}, check=check)


def metrics(output_dir) -> list:
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def records_written(output_dir) -> int:
    """How many whole records a running job has logged so far (a line still being written is not one)."""
    try:
        with open(os.path.join(output_dir, "metrics.jsonl"), "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def small_config(tmp_path, base: str = "tiny_cpu_sift.json", name: str = "cfg.json", **pretrain) -> str:
    """The tiny CPU config, shrunk for tests (seq 64, small vocab, schedule from --max_steps)."""
    config = read_config(base)
    config["scheduler"]["params"].update(total_num_steps="auto", warmup_num_steps=2)
    config["pretrain"].update({"seq_len": 64, "vocab_size": 1000, "log_interval": 1, "eval_interval": 0,
                               "save_interval": 0, "cache_dir": str(tmp_path / "cache"), **pretrain})
    return write_config(tmp_path / name, config)


def set_key(path, value):
    """A ds_config edit for ``tiny``-style helpers: ``config[path[0]]...[path[-1]] = value``."""
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return edit


def config_file(tmp_path, edit=None, raw=None, **pretrain) -> str:
    """The tiny config (``pretrain`` keys set, then ``edit(config)``) in ``tmp_path/cfg.json``, or the
    ``raw`` text in ``tmp_path/raw.json``."""
    if raw is not None:
        path = tmp_path / "raw.json"
        path.write_text(raw)
        return str(path)
    config = read_config("tiny_cpu_sift.json")
    config["pretrain"].update(pretrain)
    if edit:
        edit(config)
    return write_config(tmp_path / "cfg.json", config)


def one_line_error(capsys, argv) -> str:
    """The pretraining job's start-up refusal of ``argv``, in process: exit status 2, one line, no traceback."""
    import pytest
    with pytest.raises(SystemExit) as exc:
        load_cli().resolve(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("pretrain_bert.py: error: ")
    return err
