#!/usr/bin/env python
"""Pretrain a causal LM (Llama, Qwen2/3, Mistral, GPT-2, GPT-NeoX) from scratch with SIFT on DeepSpeed.

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/pretrain_gpt.py --ds_config ds_configs/tiny_llama_cpu_sift_experiment.json
    deepspeed launch/pretrain_gpt.py --ds_config ds_configs/llama_1b_zero2_bf16_sift_experiment.json \\
        --data 'corpus/*.jsonl' --tokenizer my_tokenizer/ --output_dir runs/llama_1b

The same application as ``launch/pretrain_bert.py`` (options, ds_config "pretrain" section, data,
checkpoints, exact resume, metrics) with the causal-LM objective: documents packed with an EOS token
between them, next-token loss. See docs/usage.md.
"""
from __future__ import annotations

from sift_ds.pretrain.cli import GPT

fail, parse_args, resolve, report_check, main = GPT.fail, GPT.parse_args, GPT.resolve, GPT.report_check, GPT.main


if __name__ == "__main__":
    main()
