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

from sift_ds.pretrain.cli import BERT
from sift_ds.pretrain.plan import resolve_plan  # noqa: F401 - re-exported for callers of this script

fail, parse_args, resolve, report_check, main = BERT.fail, BERT.parse_args, BERT.resolve, BERT.report_check, BERT.main


if __name__ == "__main__":
    main()
