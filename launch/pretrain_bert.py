#!/usr/bin/env python
"""Pretrain a BERT from scratch with SIFT (sample sifting via early exiting) on DeepSpeed.

    deepspeed launch/pretrain_bert.py --ds_config ds_configs/bert_base_zero2_bf16_sift.json \\
        --data 'corpus/*.txt' --output_dir runs/base
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/pretrain_bert.py --ds_config ds_configs/tiny_cpu_sift.json

Options can also come from the ds_config's "pretrain" section (same names, without the dashes);
the command line wins. Every option is a field of ``sift_ds.pretrain.options.PretrainOptions``.
See docs/usage.md.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from sift_ds.pretrain.job import setup_job
from sift_ds.pretrain.options import PROG, PretrainOptions, parse_options
from sift_ds.pretrain.plan import RunPlan, resolve_plan
from sift_ds.pretrain.trainer import NonFiniteLoss


def fail(err: BaseException) -> None:
    """One line on stderr and exit status 2, instead of a stack trace (SIFT_DS_TRACEBACK=1 shows it)."""
    if os.environ.get("SIFT_DS_TRACEBACK"):
        raise err
    sys.stderr.write(f"{PROG}: error: {err}\n")
    raise SystemExit(2)


def parse_args(argv: Optional[List[str]] = None) -> PretrainOptions:
    """The options of the command line and the ds_config's "pretrain" section."""
    try:
        return parse_options(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        fail(err)


def resolve(argv: Optional[List[str]] = None) -> RunPlan:
    """Parse and validate everything that needs no process group (exits with one line on error)."""
    options = parse_args(argv)
    try:
        return resolve_plan(options, create_output_dir=not options.check_only)
    except (ValueError, FileNotFoundError) as err:
        fail(err)


def report_check(plan: RunPlan) -> None:
    """--check_only: the plan's decisions on stdout, its warnings on stderr (one line each)."""
    for note in plan.notes:
        print(f"{PROG}: note: {note}")
    for warning in plan.warnings:
        sys.stderr.write(f"{PROG}: warning: {warning}\n")
    resume = f"resume {plan.resume.path}" if plan.resume is not None else "fresh start"
    print(f"{PROG}: check_only: ok: {plan.max_steps} steps, world {plan.world_size}, global batch "
          f"{plan.batch.total}, model {plan.options.model}, sift {'on' if plan.sift.enabled else 'off'}, {resume}")


def main(argv: Optional[List[str]] = None):
    plan = resolve(argv)
    if plan.options.check_only:
        report_check(plan)
        return None
    try:
        job = setup_job(plan)
    except (ValueError, FileNotFoundError, OSError) as err:
        fail(err)
    try:
        return job.run()
    except NonFiniteLoss as err:  # stops every rank alike: no checkpoint, no export, exit status 2
        fail(err)


if __name__ == "__main__":
    main()
