#!/usr/bin/env python
"""The asynchronous-convergence study: single-task models, uniform multi-task learning, the balancing
baselines and asynchronous convergence (frozen teacher, cached logits), several seeds, on the four
tasks that sift_ds.study.multitask_data derives from a documentation corpus; then report.md.

    python launch/multitask_study.py --corpus linux_docs.jsonl.xz --out docs/results/multitask_l2h64 --seeds 3

Prepares the data once (<out>/cache/data), then runs every arm of seed 0, then of seed 1, ... (one
process per run, writing runs/<arm>/seed<N>/metrics.jsonl and result.json; its output goes to
<out>/cache/logs/), and writes report.md from the finished runs. Running the same command again skips the finished runs; --report_only rewrites the
report. --run ARM:SEED runs one run in this process (what the study launches).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from typing import List

from sift_ds.study import multitask_prep
from sift_ds.study.multitask_arms import BALANCING, all_arms, parse
from sift_ds.study.multitask_data import TASKS
from sift_ds.study.multitask_report import gains, gains_markdown, markdown
from sift_ds.study.multitask_run import Settings, load_result, run

PROG = "multitask_study.py"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")
DEFAULT_ARMS = "uniform,ac_frozen,ac_cached,uncertainty,dwa,pcgrad,single"


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        sys.stderr.write(f"{PROG}: error: {message}\n")
        raise SystemExit(2)


def parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", help="JSON lines of {id: relative path, text} (.jsonl, .jsonl.xz)")
    p.add_argument("--out", required=True, help="the study's folder")
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated (default {DEFAULT_ARMS})")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--tokenizer", default=TOKENIZER, help="a local tokenizer folder")
    p.add_argument("--train_examples", type=int, default=3000, help="the training subsample (0: all)")
    p.add_argument("--validation_examples", type=int, default=800, help="the validation subsample (0: all)")
    p.add_argument("--sections", type=int, default=12, help="section classes before 'other'")
    for f in dataclasses.fields(Settings):
        p.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    p.add_argument("--report_only", action="store_true", help="rewrite report.md from the finished runs")
    p.add_argument("--run", metavar="ARM:SEED", help="run one run in this process")
    return p


def check(args) -> None:
    """One-line refusals of bad settings (ValueError)."""
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    for name in ("layers", "hidden", "max_len", "steps", "batch", "eval_every", "eval_batch", "patience", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.eval_every > args.steps:
        raise ValueError(f"--eval_every {args.eval_every} is beyond --steps {args.steps}: no evaluation to watch")
    if not args.report_only and not os.path.isfile(os.path.join(args.tokenizer, "tokenizer.json")):
        raise ValueError(f"--tokenizer {args.tokenizer}: no tokenizer.json in it")
    if not args.report_only and args.run is None and not (args.corpus and os.path.isfile(args.corpus)):
        raise ValueError(f"--corpus {args.corpus}: no such file")


def settings(args) -> Settings:
    return Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})


def data_dir(out: str) -> str:
    return os.path.join(out, "cache", "data")


def run_folder(out: str, arm: str, seed: int) -> str:
    return os.path.join(out, "runs", arm, f"seed{seed}")


def one_run(args) -> int:
    arm_name, _, seed = args.run.rpartition(":")
    arms = all_arms()
    if arm_name not in arms or not seed.isdigit():
        raise ValueError(f"--run: expected ARM:SEED with ARM one of {', '.join(arms)}, got {args.run!r}")
    with open(os.path.join(data_dir(args.out), multitask_prep.SUMMARY), encoding="utf-8") as f:
        summary = json.load(f)
    splits = multitask_prep.load(data_dir(args.out))
    folder = run_folder(args.out, arm_name, int(seed))
    result = run(arms[arm_name], int(seed), splits, summary["classes"], summary["vocab_size"], settings(args), folder)
    print(json.dumps({k: result[k] for k in ("arm", "seed", "train_s", "best", "final", "converged_step")}))
    return 0


def child_args(args, arm: str, seed: int) -> List[str]:
    words = [sys.executable, os.path.abspath(__file__), "--out", args.out, "--run", f"{arm}:{seed}"]
    for f in dataclasses.fields(Settings):
        words += [f"--{f.name}", str(getattr(args, f.name))]
    return words


def write_report(args, arm_names: List[str]) -> str:
    results, missing = [], []
    for seed in range(args.seeds):
        for arm in arm_names:
            r = load_result(run_folder(args.out, arm, seed))
            (results.append(r) if r else missing.append(f"{arm}:{seed}"))
    single = [a for a in arm_names if a.startswith("single_")]
    order = [a for a in arm_names if not a.startswith("single_")] + (["single-task"] if single else [])
    methods = [a for a in arm_names if a.startswith("ac_")]
    baselines = [a for a in arm_names if a in BALANCING]
    with open(os.path.join(data_dir(args.out), multitask_prep.SUMMARY), encoding="utf-8") as f:
        summary = json.load(f)
    s = settings(args)
    lines = ["# Asynchronous convergence against its baselines: the report", "",
             f"Written by `python launch/multitask_study.py` from {len(results)} finished runs "
             f"(arms: {', '.join(arm_names)}; seeds 0..{args.seeds - 1}).",
             f"Runs not finished: {', '.join(missing) if missing else 'none'}.", "",
             f"Model: BERT L{s.layers}-H{s.hidden}, no pretraining, a linear head per task on the tokens' mean; "
             f"{s.steps} steps of {s.batch} examples (max {s.max_len} tokens), AdamW lr {s.lr:g}, linear decay "
             f"to 0 after {s.warmup:g} warm-up; validation every {s.eval_every} steps. "
             f"Asynchronous convergence: every task watched on validation accuracy, patience {s.patience}, "
             f"min_delta {s.min_delta:g}, T {s.temperature:g}, KD weight {s.kd_weight:g}.",
             f"Data: {summary['examples']['train']} training examples (a fixed subsample), "
             f"{summary['examples']['validation']} validation (a fixed subsample), {summary['examples']['test']} "
             "test (the whole split fixed by document)."]
    lines += markdown(results, TASKS, order)
    lines += gains_markdown(gains(results, TASKS, methods, baselines))
    path = os.path.join(args.out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        check(args)
        if args.run:
            return one_run(args)
        arms = parse(args.arms)
        names = [a.name for a in arms]
        if not args.report_only:
            multitask_prep.prepare(args.corpus, args.tokenizer, data_dir(args.out), args.max_len,
                                   args.train_examples or None, args.validation_examples or None, args.sections)
            for seed in range(args.seeds):
                for arm in names:
                    folder = run_folder(args.out, arm, seed)
                    if load_result(folder):
                        continue
                    shutil.rmtree(folder, ignore_errors=True)
                    os.makedirs(folder)
                    print(f"{PROG}: {arm} seed {seed}", flush=True)
                    log_path = os.path.join(args.out, "cache", "logs", f"{arm}-seed{seed}.txt")
                    os.makedirs(os.path.dirname(log_path), exist_ok=True)
                    with open(log_path, "w", encoding="utf-8") as log:
                        code = subprocess.call(child_args(args, arm, seed), stdout=log, stderr=subprocess.STDOUT)
                    if code:
                        raise ValueError(f"{arm} seed {seed} failed (exit {code}): see {log_path}")
        print(f"{PROG}: wrote {write_report(args, names)}")
    except ValueError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
