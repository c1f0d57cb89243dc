"""The masked-positions-only MLM head against the dense one: steps per second through HF Trainer
(launch/run_mlm_sift.py, SIFT off) on the CPU, and what the FLOPs model predicts.

    taskset -c 1 env OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu .venv/bin/python benchmarks/mlm_head.py \\
        --steps 200 --repeats 2 --json runs/mlm_head.json

* Measured: run_mlm_sift.py at L4-H128 (ds_configs/models/bert_L4_H128.json, the pydoc WordPiece
  tokenizer of 4,096 tokens), batch 16, seq 128, ``--sparse_mlm_head true`` and ``false``, the same
  seed (the same initial weights, batches and masks), alternating, ``--repeats`` times each. Steps
  per second are Trainer's ``train_steps_per_second`` (its whole training loop, the first step and
  the final checkpoint included); the loss of the first step comes from its log history.
* Model: ``FlopsModel.for_masked_lm`` per trained token (forward + backward), dense head against
  the head on the 15% masked positions only, at L4-H128 (vocab 4,096), BERT-base (vocab 30,522) and
  BERT-base with a 128k vocabulary; seq 128. Its ratio is the speed-up of a compute-bound step.
* ``busy_other_cores``: the mean load of the cores this process is not pinned to during the runs
  (from /proc/stat), as the measurement shares the machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import BertForMaskedLM

from sift_ds.pretrain.metrics import FlopsModel
from sift_ds.pretrain.models import bert_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "run_mlm_sift.py")
CONFIG = os.path.join(REPO, "ds_configs", "models", "bert_L4_H128.json")
TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")
SEQ, MASKED = 128, 0.15
FLOPS_MODELS = {"L4-H128, vocab 4,096": (CONFIG, 4096), "BERT-base, vocab 30,522": ("base", 30522),
                "BERT-base, vocab 128,000": ("base", 128000)}


def flops_model() -> dict:
    """Training FLOPs per token, dense and masked-only head, and their ratio, per model of FLOPS_MODELS."""
    out = {}
    for name, (preset, vocab) in FLOPS_MODELS.items():
        if preset.endswith(".json"):
            config = transformers.AutoConfig.from_pretrained(preset, vocab_size=vocab)
        else:
            config = bert_config(preset, vocab)
        with torch.device("meta"):  # parameter counts only
            model = BertForMaskedLM(config)
        dense, sparse = (FlopsModel.for_masked_lm(model, SEQ, 1, MASKED, sparse_head=s).train_per_token
                         for s in (False, True))
        out[name] = {"dense_per_token": dense, "sparse_per_token": sparse, "speedup": dense / sparse,
                     "head_share_dense": (dense - sparse) / ((1 - MASKED) * dense)}
    return out


def cpu_times() -> dict:
    """cpu index -> (busy, total) jiffies from /proc/stat (empty where there is none)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
    except OSError:
        return {}
    return {int(p[0][3:]): (sum(map(int, p[1:])) - int(p[4]) - int(p[5]), sum(map(int, p[1:]))) for p in lines}


def run(sparse: bool, steps: int, batch: int, out_dir: str) -> dict:
    cmd = [sys.executable, SCRIPT, "--config_name", CONFIG, "--tokenizer_name", TOKENIZER, "--output_dir", out_dir,
           "--do_train", "--do_eval",
           "--per_device_train_batch_size", str(batch), "--max_seq_length", str(SEQ), "--max_steps", str(steps),
           "--logging_steps", "1", "--save_steps", str(steps), "--use_cpu", "--report_to", "none",
           "--max_eval_samples", "16", "--seed", "0", "--disable_tqdm", "true",
           "--sift_config", '{"enabled": false}', "--sparse_mlm_head", str(sparse).lower()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}\n{proc.stderr[-4000:]}")
    results = json.load(open(os.path.join(out_dir, "all_results.json")))
    state = json.load(open(os.path.join(out_dir, f"checkpoint-{steps}", "trainer_state.json")))
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    return {"steps_per_s": results["train_steps_per_second"], "runtime_s": results["train_runtime"],
            "first_loss": losses[0], "last_loss": losses[-1], "eval_loss": results["eval_loss"],
            "command": " ".join(cmd[1:])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="runs of each head, alternating")
    p.add_argument("--flops_only", action="store_true", help="the FLOPs model only (no runs)")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)
    pinned = sorted(os.sched_getaffinity(0))
    report = {"date": datetime.date.today().isoformat(), "machine": platform.node(), "cpu": cpu_name(),
              "pinned_cores": pinned, "torch": torch.__version__, "transformers": transformers.__version__,
              "command": " ".join([os.path.relpath(sys.argv[0], REPO), *(argv or sys.argv[1:])]),
              "flops_model": flops_model(), "runs": {"sparse": [], "dense": []}}
    if not args.flops_only:
        before = cpu_times()
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats):
                for name in ("dense", "sparse"):
                    out = os.path.join(tmp, f"{name}{i}")
                    report["runs"][name].append(run(name == "sparse", args.steps, args.batch, out))
                    print(name, report["runs"][name][-1]["steps_per_s"], flush=True)
        after = cpu_times()
        others = [c for c in after if c not in pinned and c in before]
        report["busy_other_cores"] = statistics.mean(
            (after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1]) for c in others) if others else None
        med = {k: statistics.median(r["steps_per_s"] for r in v) for k, v in report["runs"].items()}
        report["median_steps_per_s"] = med
        report["speedup"] = med["sparse"] / med["dense"]
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text)
    return report


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


if __name__ == "__main__":
    main()
