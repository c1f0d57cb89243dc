#!/usr/bin/env python
"""Pretrain a BERT from scratch with SIFT (sample sifting via early exiting) on DeepSpeed.

    deepspeed launch/pretrain_bert.py --ds_config ds_configs/bert_base_zero2_bf16_sift.json \\
        --data 'corpus/*.txt' --output_dir runs/base
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/pretrain_bert.py --ds_config ds_configs/tiny_cpu_sift.json

Options can also come from the ds_config's "pretrain" section (same names, without the dashes);
the command line wins. See docs/usage.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from sift_ds import pretrain
from sift_ds.config import CRITERIA, KERNELS, SCOPES
from sift_ds.data import OBJECTIVES

PROG = "pretrain_bert.py"


def str2bool(value: str) -> bool:
    lowered = str(value).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("DeepSpeed")
    g.add_argument("--ds_config", "--deepspeed_config", dest="ds_config", metavar="JSON",
                   help="DeepSpeed config with a 'sift' section (and optionally a 'pretrain' section)")
    g.add_argument("--deepspeed", dest="deepspeed_flag", nargs="?", const=True, default=None, metavar="JSON",
                   help="alias of --ds_config; a bare --deepspeed flag (DeepSpeed's convention) is ignored")
    g.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", "0")),
                   help="set by the DeepSpeed launcher")

    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="base", help="preset (tiny, mini, small, medium, base, large) or HF config path")
    g.add_argument("--sparse_mlm_head", type=str2bool, default=True, metavar="BOOL",
                   help="training forward runs the MLM head on masked positions only (same loss, as "
                        "MosaicBERT / academic-budget-bert); false: HF's head on every position")
    g.add_argument("--objective", default="mlm", choices=OBJECTIVES, help="masked LM, or masked LM + next sentence")
    g.add_argument("--seq_len", type=int, default=128, help="tokens per sequence")
    g.add_argument("--data", action="append", metavar="PATH_OR_GLOB",
                   help="text files (blank line between documents) or .json/.jsonl files; repeatable; "
                        "None: CPython's pydoc_data documentation text")
    g.add_argument("--text_field", default="text", help="text field of JSON lines / hub datasets")
    g.add_argument("--dataset_name", help="a `datasets` hub name (needs a network)")
    g.add_argument("--dataset_config", help="the hub dataset's configuration name")
    g.add_argument("--dataset_split", default="train", help="the hub dataset's split")
    g.add_argument("--cache_dir", help="`datasets` cache; None: the datasets library's")
    g.add_argument("--tokenizer", help="tokenizer path or hub name; None: train WordPiece on the corpus")
    g.add_argument("--vocab_size", type=int, default=30522, help="size of the trained WordPiece vocabulary")
    g.add_argument("--val_fraction", type=float, default=0.05, help="fraction of blocks held out for validation")
    g.add_argument("--max_val_samples", type=int, default=2000, help="cap on the validation blocks")
    g.add_argument("--data_seed", type=int, default=0, help="seed of the validation split and NSP pairs")
    g.add_argument("--mlm_probability", type=float, default=0.15, help="masked fraction (80/10/10)")

    g = p.add_argument_group("training")
    g.add_argument("--max_steps", type=int, help="optimizer steps; None: the scheduler's total_num_steps")
    g.add_argument("--time_budget", type=float, metavar="MINUTES",
                   help="stop (with a checkpoint) after this much training wall time, cumulative over resumes")
    g.add_argument("--seed", type=int, default=42, help="initialisation, dropout, data order, masks")
    g.add_argument("--eval_batch_size", type=int, help="None: train_micro_batch_size_per_gpu")
    g.add_argument("--peak_tflops", type=float, default=312.0, help="peak TFLOP/s per device for MFU (A100 bf16)")

    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--output_dir", default="runs/bert", help="checkpoints, metrics, tokenizer, final model")
    g.add_argument("--log_interval", type=int, help="None: 2%% of max_steps, at most 100")
    g.add_argument("--eval_interval", type=int, help="0: only at the end; None: 10%% of max_steps, at most 1000")
    g.add_argument("--save_interval", type=int, default=1000, help="0: only at the end")
    g.add_argument("--keep_checkpoints", type=int, default=0, help="keep the newest N checkpoints (0: all)")
    g.add_argument("--exit_interval", type=int, default=0, help="save and exit after a step divisible by N")
    g.add_argument("--resume", metavar="auto|PATH", help="auto: the latest checkpoint in output_dir, if any; or a checkpoint path")

    g = p.add_argument_group("SIFT: overrides of the ds_config 'sift' section (None: keep the config's)")
    g.add_argument("--sift_enabled", type=str2bool, metavar="BOOL", help="false: vanilla training")
    g.add_argument("--sift_criterion", choices=CRITERIA, help="early-exit score")
    g.add_argument("--sift_exit_layer", type=int, help="score after this many encoder layers")
    g.add_argument("--sift_keep_ratio", type=float, help="kept fraction of the gross batch")
    g.add_argument("--sift_warmup_steps", type=int, help="optimizer steps that keep a random subset")
    g.add_argument("--sift_scope", choices=SCOPES, help="top-k over all ranks or per rank")
    g.add_argument("--sift_kernel", choices=KERNELS, help="scorer backend")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command line, then the ds_config's "pretrain" section for the options it left at default."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if isinstance(args.deepspeed_flag, str):
        if args.ds_config and args.ds_config != args.deepspeed_flag:
            parser.error(f"--deepspeed {args.deepspeed_flag} and --ds_config {args.ds_config} disagree")
        args.ds_config = args.deepspeed_flag
        argv += ["--ds_config", args.ds_config]
    if args.ds_config:
        try:
            section = pretrain.read_pretrain_section(args.ds_config)
            extra = pretrain.section_to_argv(section, parser, args)
        except ValueError as err:
            fail(err)
        if extra:
            args = parser.parse_args(extra + argv)
    return args


def fail(err: BaseException) -> None:
    """One line on stderr and exit status 2, instead of a stack trace (SIFT_DS_TRACEBACK=1 shows it)."""
    if os.environ.get("SIFT_DS_TRACEBACK"):
        raise err
    sys.stderr.write(f"{PROG}: error: {err}\n")
    raise SystemExit(2)


def resolve(argv: Optional[List[str]] = None) -> pretrain.RunPlan:
    """Parse and validate everything that needs no process group (exits with one line on error)."""
    args = parse_args(argv)
    try:
        return pretrain.resolve_plan(args)
    except (ValueError, FileNotFoundError) as err:
        fail(err)


def main(argv: Optional[List[str]] = None):
    plan = resolve(argv)
    try:
        job = pretrain.setup_job(plan)
    except (ValueError, FileNotFoundError, OSError) as err:
        fail(err)
    return job.run()


if __name__ == "__main__":
    main()
