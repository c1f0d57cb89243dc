#!/usr/bin/env python
"""Where a training step's time goes, stage by stage, in each arm of launch/run_mlm_study.py:
``run_mlm.py`` (dense head) against SiftTrainer and the DeepSpeed job, without and with SIFT.

    python benchmarks/step_stages.py --ds_config ds_configs/l12h128_cpu_study.json \\
        --work runs/run_mlm_l12h128 --steps 80 --cores 0,1 --out runs/step_stages

Each arm runs ``--steps`` steps of the study's own command (sift_ds.study.run_mlm_arms, on the
study's prepared data in --work) under ``py-spy record`` (an external sampling profiler: the scripts
run unchanged; ``pip install py-spy``), one arm per core, its sampler on the same core. Every
sampled Python stack inside the training loop is put in one stage: the first of these with a frame
anywhere in the stack

* ``backward``: inside ``Tensor.backward`` (autograd runs the whole backward from there);
* ``optimizer``: inside an optimizer's ``step`` (and ``zero_grad``);
* ``grad clipping``: inside ``clip_grad_norm_``;
* ``selection``: inside SIFT's selection (its prefix forward and scoring included);
* ``data``: inside the data loader, the collator or the masking;

else, in the forward, the innermost frame that is the MLM head or the loss (``forward: MLM head +
loss``) or the embeddings or encoder (``forward: encoder``); else ``front-end`` (the rest of the
loop: Trainer's or the job's own code, logging, the scheduler).

Samples outside the training loop (start-up, tokenization, saving) are left out. Writes
``stages.json`` and ``stages.md`` in --out: per arm, each stage's share of the loop's samples and
its seconds per step (share x the run's own seconds per step).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from typing import Dict, List, Optional, Sequence

from sift_ds.ports import free_port
from sift_ds.study import run_mlm_arms
from sift_ds.study.run_mlm_report import study_settings

PROG = "step_stages.py"
LOOP = ("_inner_training_loop", "sift_ds/pretrain/trainer.py")
OUTER = (  # (stage, markers): the first stage with a marker in any frame of the stack
    ("backward", ("Tensor.backward", "run_backward")),
    ("optimizer", ("torch/optim/", "zero_grad")),
    ("grad clipping", ("clip_grad_norm",)),
    ("selection", ("sift_ds/frontend.py", "sift_ds/selection.py", "sift_ds/selector.py", "sift_ds/criteria/",
                   "sift_ds/kernels/", "SiftEngine.select")),
    ("data", ("torch/utils/data/", "data_collator", "hf_masking.py", "sift_ds/pretrain/loader.py", "sift_ds/batching.py")),
)
INNER = (  # in the forward, the innermost frame with a marker decides (the sparse head wraps the whole forward)
    ("forward: MLM head + loss", ("BertOnlyMLMHead", "BertLMPredictionHead", "BertPredictionHeadTransform",
                                  "sift_ds/mlm_head.py", "cross_entropy", "ForMaskedLMLoss")),
    ("forward: encoder", ("BertEncoder", "BertEmbeddings", "BertLayer", "BertModel.forward")),
)
STAGES = [stage for stage, _ in OUTER + INNER] + ["front-end"]


def stage_of(frames: Sequence[str]) -> Optional[str]:
    """The stage of one stack (root first), or None outside the training loop."""
    if not any(marker in frame for frame in frames for marker in LOOP):
        return None
    for stage, markers in OUTER:
        if any(marker in frame for frame in frames for marker in markers):
            return stage
    for frame in reversed(frames):
        for stage, markers in INNER:
            if any(marker in frame for marker in markers):
                return stage
    return "front-end"


def read_raw(path: str) -> Counter:
    """py-spy's raw (folded) output: 'frame;frame;... count' per line -> stage -> samples."""
    counts: Counter = Counter()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack and count.isdigit():
                stage = stage_of(stack.split(";"))
                if stage is not None:
                    counts[stage] += int(count)
    return counts


def profile(arm, shape, py_spy: str, core: int, out: str) -> dict:
    run_dir = os.path.join(out, arm.label)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    if arm.front_end == "job":
        cmd = run_mlm_arms.job_command(os.path.join(os.path.dirname(sys.executable), "deepspeed"), free_port(), arm,
                                       shape, 0, run_dir)
    else:
        cmd = run_mlm_arms.run_mlm_command(sys.executable, arm, shape, 0, run_dir)
    raw = os.path.join(run_dir, "py-spy.txt")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.setdefault("DS_ACCELERATOR", "cpu")
    with open(os.path.join(run_dir, "log.txt"), "w", encoding="utf-8") as log:
        subprocess.run([py_spy, "record", "--format", "raw", "--rate", "50", "--subprocesses", "--nonblocking",
                        "--output", raw, "--", *cmd], stdout=log, stderr=subprocess.STDOUT, env=env, check=True,
                       preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    counts = read_raw(raw)
    total = sum(counts.values())
    step_s = run_mlm_arms.train_seconds(arm, run_dir)[0] / arm.steps
    return {"arm": arm.label, "seconds_per_step": step_s, "samples": total,
            "share": {s: counts[s] / total for s in STAGES}, "seconds": {s: step_s * counts[s] / total for s in STAGES}}


def markdown(rows: List[dict]) -> str:
    head = "| stage | " + " | ".join(r["arm"] for r in rows) + " |"
    lines = [head, "|" + "---|" * (len(rows) + 1)]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(f"{r['seconds'][stage]:.3f} ({100 * r['share'][stage]:.0f}%)"
                                                  for r in rows) + " |")
    lines.append("| **step** | " + " | ".join(f"**{r['seconds_per_step']:.3f}**" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--ds_config", required=True)
    p.add_argument("--work", required=True, help="the study's --work (its prepared data and tokenizer)")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--cores", default="0,1", help="one arm per core at a time")
    p.add_argument("--sift", default='{"anneal_start_step": 0, "anneal_end_step": 0, "selection_start_step": 10}',
                   help="the SIFT arms' keys over the ds_config's sift section")
    p.add_argument("--py_spy", default=shutil.which("py-spy"), help="the py-spy executable")
    p.add_argument("--out", default="runs/step_stages")
    args = p.parse_args(argv)
    if not args.py_spy or not os.path.exists(args.py_spy):
        sys.stderr.write(f"{PROG}: error: py-spy not found (pip install py-spy, or --py_spy PATH)\n")
        return 2
    section, settings = study_settings(args.ds_config, args.sift)
    settings["warmup_steps"] = min(settings["warmup_steps"], args.steps // 4)
    work = os.path.abspath(args.work)
    shape = run_mlm_arms.StudyShape(os.path.abspath(section["model"]), os.path.abspath(args.ds_config),
                                    os.path.join(work, "prepared", "tokenizer"), os.path.join(work, "data", "train.json"),
                                    os.path.join(work, "prepared"), **settings)
    arms = [a for a in run_mlm_arms.study_arms([args.steps, args.steps + 1], args.steps) if a.label != f"run_mlm-{args.steps + 1}"]
    cores = [int(c) for c in args.cores.split(",")]
    out = os.path.abspath(args.out)
    rows: Dict[str, dict] = {}
    pending = list(arms)
    lock = threading.Lock()

    def worker(core: int) -> None:
        while True:
            with lock:
                if not pending:
                    return
                arm = pending.pop(0)
            row = profile(arm, shape, args.py_spy, core, out)
            with lock:
                rows[arm.label] = row

    threads = [threading.Thread(target=worker, args=(c,)) for c in cores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ordered = [rows[a.label] for a in arms if a.label in rows]
    with open(os.path.join(out, "stages.json"), "w", encoding="utf-8") as f:
        json.dump(ordered, f, indent=1)
    with open(os.path.join(out, "stages.md"), "w", encoding="utf-8") as f:
        f.write(markdown(ordered))
    print(markdown(ordered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
