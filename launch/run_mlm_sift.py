#!/usr/bin/env python
"""Masked-LM pretraining with ``transformers.Trainer``, in the style of transformers' ``run_mlm.py``,
with SIFT. Adopting SIFT in ``run_mlm.py`` is two lines: the import of ``SiftTrainer`` and the class
name of the trainer (both marked below); SIFT's settings come from the ``"sift"`` section of the
``--deepspeed`` config. This example also takes ``--sift_config`` (a JSON object) for runs without
DeepSpeed. See docs/hf_trainer.md.

    deepspeed --num_gpus 2 launch/run_mlm_sift.py --config_name ds_configs/models/bert_L4_H128.json \\
        --tokenizer_name ds_configs/tokenizers/pydoc_wordpiece_4096 --train_file corpus.txt \\
        --output_dir runs/mlm_sift --per_device_train_batch_size 16 --max_steps 1000 \\
        --deepspeed ds_configs/hf/zero2_sift.json

Without ``--train_file`` it trains on the English documentation text shipped inside CPython.
The model is built from its config (``AutoModelForMaskedLM.from_config``): nothing is downloaded.
"""
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from itertools import chain
from typing import Optional

import datasets
from transformers import (AutoConfig, AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling,
                          HfArgumentParser, TrainingArguments, set_seed)

from sift_ds.hf import SiftTrainer  # (run_mlm.py: from transformers import Trainer)
from sift_ds.pretrain.corpus import default_corpus

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    config_name: str = field(metadata={"help": "a masked-LM model config (config.json or its directory)"})
    tokenizer_name: str = field(metadata={"help": "a tokenizer directory (tokenizer.json, tokenizer_config.json)"})


@dataclass
class DataTrainingArguments:
    train_file: Optional[str] = field(default=None, metadata={"help": "a text file, one document per line"})
    validation_split_percentage: int = field(default=5, metadata={"help": "share of the data held out, in percent"})
    max_seq_length: int = field(default=128, metadata={"help": "tokens per training sequence"})
    mlm_probability: float = field(default=0.15, metadata={"help": "share of tokens masked"})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "evaluate on at most this many blocks"})
    sift_config: Optional[str] = field(
        default=None, metadata={"help": "SIFT settings as a JSON object (without --deepspeed; with it, its 'sift' section)"})
    sparse_mlm_head: bool = field(
        default=True, metadata={"help": "the training forward runs the MLM head on the masked positions only (the same "
                                        "loss and gradients); false: the dense head at every position"})


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING)
    set_seed(training_args.seed)

    if data_args.train_file:
        raw = datasets.load_dataset("text", data_files={"train": data_args.train_file})["train"]
    else:
        raw = default_corpus()
    raw = raw.train_test_split(test_size=data_args.validation_split_percentage / 100, seed=training_args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name)
    config = AutoConfig.from_pretrained(model_args.config_name, vocab_size=len(tokenizer))
    model = AutoModelForMaskedLM.from_config(config)

    def tokenize(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    block = data_args.max_seq_length

    def group_texts(examples):  # concatenate, then cut into blocks of max_seq_length (run_mlm.py's way)
        joined = {k: list(chain(*examples[k])) for k in examples}
        total = len(joined["input_ids"]) // block * block
        return {k: [t[i:i + block] for i in range(0, total, block)] for k, t in joined.items()}

    with training_args.main_process_first(desc="tokenizing"):
        columns = raw["train"].column_names
        lm = raw.map(tokenize, batched=True, remove_columns=columns).map(group_texts, batched=True)
    if data_args.max_eval_samples is not None:
        lm["test"] = lm["test"].select(range(min(data_args.max_eval_samples, len(lm["test"]))))

    trainer = SiftTrainer(  # run_mlm.py: Trainer(
        model=model,
        args=training_args,
        train_dataset=lm["train"],
        eval_dataset=lm["test"],
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=data_args.mlm_probability),
        sift=json.loads(data_args.sift_config) if data_args.sift_config else None,
        sparse_mlm_head=data_args.sparse_mlm_head,  # (not in run_mlm.py: SiftTrainer's default is True)
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("all", {**result.metrics, **metrics})


if __name__ == "__main__":
    main()
