"""Every shipped ds_config against the recommendation of docs/results.md ("Choosing a criterion"):
the library default and every BERT-class config select by the recommended criterion and exit layer,
with selection starting inside the learning-rate warm-up; causal configs select only when labelled
an experiment; and a tiny copy of each config (its own SIFT, ZeRO, optimizer and schedule sections;
the tiny model, fp32, a few steps) trains. Identical tiny copies share one run, and all of them run
in one process per job script, so that the imports are paid once."""
import glob
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from launch_helpers import CONFIGS, GPT_SCRIPT, REPO, SCRIPT, cpu_env, metrics, read_config
from sift_ds.config import SiftConfig
from sift_ds.config_io import load_ds_config
from sift_ds.hf import sift_config_for
from sift_ds.pretrain import ds_policy
from sift_ds.pretrain.ds_policy import resolve_start
from sift_ds.pretrain.plan import resolve_sift
from sift_ds.schedule import resolve_selection_start

JOB_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS, "*.json")))
ALL_CONFIGS = JOB_CONFIGS + sorted(glob.glob(os.path.join(CONFIGS, "hf", "*.json")))
STEPS = 3
DRIVER = """
import json, runpy, sys
mains = {}
for script, config, out in json.loads(sys.argv[1]):
    mains.setdefault(script, runpy.run_path(script)["main"])(["--ds_config", config, "--output_dir", out])
"""


def name(path: str) -> str:
    return os.path.relpath(path, CONFIGS)


def recommended():
    """(criterion, exit layer) that docs/results.md recommends, read from its "Choosing a criterion"."""
    with open(os.path.join(REPO, "docs", "results.md"), encoding="utf-8") as f:
        section = f.read().split("## Choosing a criterion", 1)[1].split("\n## ", 1)[0]
    found = re.search(r'Use `"criterion": "(\w+)"` at `"exit_layer": (\d+)`', section)
    assert found, "docs/results.md: 'Choosing a criterion' names no recommendation"
    return found.group(1), int(found.group(2))


def causal(path: str) -> bool:
    return load_ds_config(path).get("pretrain", {}).get("objective") == "clm"


def test_the_library_default_is_the_recommended_criterion():
    criterion, exit_layer = recommended()
    assert (SiftConfig().criterion, SiftConfig().exit_layer) == (criterion, exit_layer)
    # the Trainer front-end without a sift= or a "sift" section falls back to the same default
    assert sift_config_for(None, SimpleNamespace(deepspeed=None)) == SiftConfig()
    with open(os.path.join(REPO, "docs", "design.md"), encoding="utf-8") as f:  # the keys' table
        row = next(line for line in f if line.startswith("| `criterion` |"))
    assert re.split(r"(?<!\\)\|", row)[3].strip() == f'`"{criterion}"`', row


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=name)
def test_shipped_config_validates_and_follows_the_recommendation(path):
    config = load_ds_config(path)
    sift = SiftConfig.from_dict(config.get("sift"))
    if causal(path):  # measured not to help (docs/results_causal.md): off, or a labelled experiment
        assert not sift.enabled or "experiment" in name(path) or "_study" in name(path), name(path)
        return
    if not sift.enabled:
        return
    assert (sift.criterion, sift.exit_layer) == recommended(), name(path)


def lr_peak(config: dict, max_steps: int) -> int:
    """The step where the config's learning rate peaks, by hand: its warm-up, "auto" being 0.2 % of
    the steps rounded up (docs/usage.md), at least 2 (DeepSpeed's warm-up schedulers)."""
    warmup = config["scheduler"]["params"]["warmup_num_steps"]
    return max(2, -(-2 * max_steps // 1000) if warmup == "auto" else warmup)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=name)
def test_shipped_config_starts_selection_before_the_lr_peak(path):
    """Loaded with its own max_steps as the job resolves it, every config that selects starts inside
    the learning-rate warm-up ("auto": 30 % of it), or says that it reproduces a study that did not."""
    config = load_ds_config(path)
    sift = SiftConfig.from_dict(config.get("sift"))
    if not sift.enabled:
        return
    if "pretrain" not in config:  # Trainer's config, with docs/hf_trainer.md's command: --warmup_steps 100
        start, peak = resolve_selection_start(sift, 100, "--warmup_steps 100").start_step, 100
    else:  # the job's own steps: the schedule's "auto" values filled in, then the start resolved
        max_steps = config["pretrain"]["max_steps"]
        ds_policy.resolve_schedule(config, max_steps, [])
        start, peak = resolve_start(sift, config, False).start_step, lr_peak(load_ds_config(path), max_steps)
    if sift.selection_start_step == "auto":
        assert start == int(0.3 * peak + 0.5), (name(path), start, peak)
    if sift.start_after_lr_peak:  # a study that started at the peak, reproduced as it ran
        assert "_study" in name(path) and "peak" in read_config(name(path))["_comment"] and start == peak, name(path)
    else:
        assert 0 < start < peak, (name(path), start, peak)


def test_study_configs_start_selection_where_their_studies_did():
    """Each study's recorded run (docs/results/*/runs/*/run_config.json of an entropy arm) against its
    shipped config resolved as the job does: the same selection start and learning-rate warm-up."""
    recorded = sorted(glob.glob(os.path.join(REPO, "docs", "results", "*", "runs", "entropy-exit1*", "seed0",
                                             "run_config.json")))
    assert recorded
    for path in recorded:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
        options = run["options"]
        config = load_ds_config(os.path.join(REPO, options["ds_config"]))
        overrides = {k: v for k, v in options["sift"].items()}
        sift = resolve_sift(config["sift"], overrides)
        lr_warmup = options.get("lr_warmup_steps", options.get("warmup_steps"))  # the option's old name
        ds_policy.resolve_schedule(config, run["max_steps"], [], lr_warmup)
        resolved = resolve_start(sift, config, lr_warmup is not None)
        assert resolved.start_step == run["sift"]["warmup_steps"], path
        assert (config["scheduler"]["params"]["warmup_num_steps"]
                == run["ds_config"]["scheduler"]["params"]["warmup_num_steps"]), path


def tiny_copy(path: str, corpus: str, cache: str) -> dict:
    """The config's own sift, zero, optimizer and scheduler sections at tiny size: the tiny model of
    its kind, fp32 (the CPU), a micro-batch of 4, STEPS steps with selection from step 2."""
    config = read_config(name(path))
    clm = config["pretrain"].get("objective") == "clm"
    for key in ("bf16", "fp16", "tensorboard", "train_batch_size"):
        config.pop(key, None)
    config["train_micro_batch_size_per_gpu"] = 4
    config["gradient_accumulation_steps"] = min(2, config.get("gradient_accumulation_steps", 1))
    config["scheduler"]["params"].update(warmup_num_steps=1, total_num_steps="auto")  # DeepSpeed: 2 steps
    sift = config["sift"]
    if sift.get("enabled", True):
        sift.update(selection_start_step=1, kernel="torch")
        if sift.get("anneal_end_step"):
            sift.update(anneal_start_step=2, anneal_end_step=STEPS)
    config["pretrain"] = {"model": "tiny_llama" if clm else "tiny", "objective": config["pretrain"].get("objective", "mlm"),
                          "seq_len": 32, "vocab_size": 120, "max_steps": STEPS, "log_interval": 1,
                          "eval_interval": STEPS, "save_interval": 0, "data": [corpus], "val_fraction": 0.1, "cache_dir": cache}
    return config


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """{shipped config: its tiny run's output directory}; identical tiny copies share one run."""
    tmp = tmp_path_factory.mktemp("shipped")
    corpus = tmp / "corpus.txt"
    words = "the of and a to in is was for on data model layer token vocabulary".split()
    corpus.write_text("\n\n".join(" ".join(words[(i * 7 + j * j) % len(words)] for j in range(40))
                                  for i in range(160)))
    outs, jobs, seen = {}, [], {}
    for path in JOB_CONFIGS:
        config = tiny_copy(path, str(corpus), str(tmp / "cache"))
        key = json.dumps(config, sort_keys=True)
        if key not in seen:
            seen[key] = tmp / f"run{len(seen)}"
            (tmp / f"run{len(seen) - 1}.json").write_text(key)
            script = GPT_SCRIPT if causal(path) else SCRIPT
            jobs.append([script, str(tmp / f"run{len(seen) - 1}.json"), str(seen[key])])
        outs[path] = seen[key]
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(jobs)], cwd=REPO, env=cpu_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return outs


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=name)
def test_shipped_config_trains_at_tiny_size(tiny_runs, path):
    records = metrics(tiny_runs[path])
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(r["train_loss"] > 0 and r["train_loss"] < 1e3 for r in records)
    assert records[-1]["val_loss"] is not None and records[-1]["val_loss"] < 1e3
    if load_ds_config(path)["sift"].get("enabled", True):  # a random subset in the warm-up, then selection
        assert [r["sift/warmup"] for r in records] == [1.0] + [0.0] * (STEPS - 1)
        assert records[-1]["gross_samples"] == 2 * records[-1]["samples"]  # keep 0.5 of the scored rows
    else:
        assert records[-1]["gross_samples"] == records[-1]["samples"]
