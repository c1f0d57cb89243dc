#!/usr/bin/env python
"""transformers' ``examples/pytorch/language-modeling/run_mlm.py`` with SIFT: the same flags and
behaviour, ``SiftTrainer`` for ``Trainer`` (marked below), SIFT's settings from the ``"sift"`` section
of the ``--deepspeed`` config or from ``--sift_config`` (a JSON object). A run_mlm.py command line
works with one flag added (``--sift_config`` or a ``--deepspeed`` config with a ``"sift"`` section):

    deepspeed --num_gpus 2 launch/run_mlm_sift.py --config_name ds_configs/models/bert_L4_H128.json \\
        --tokenizer_name ds_configs/tokenizers/pydoc_wordpiece_4096 --train_file corpus.txt \\
        --do_train --do_eval --output_dir runs/mlm_sift --per_device_train_batch_size 16 \\
        --max_steps 1000 --warmup_steps 100 --deepspeed ds_configs/hf/zero2_sift.json

Where run_mlm.py's behaviour differs, docs/hf_trainer.md says so. Errors in what the command line
asks for are one line on stderr and exit status 2 (SIFT_DS_TRACEBACK=1 shows the stack trace).
"""
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from itertools import chain
from typing import Optional

import datasets
import numpy as np
import transformers
from transformers import (CONFIG_MAPPING, MODEL_FOR_MASKED_LM_MAPPING, AutoConfig, AutoModelForMaskedLM,
                          AutoTokenizer, DataCollatorForLanguageModeling, HfArgumentParser, set_seed)
from transformers.trainer_utils import get_last_checkpoint

from sift_ds.config import SiftConfig
from sift_ds.hf import SiftTrainer  # (run_mlm.py: from transformers import Trainer)
from sift_ds.shards.blocks import PreparedRows, check_manifest, open_prepared
from sift_ds.shards.layout import tokenizer_digest
from sift_ds.pretrain.corpus import TEXT_SAMPLES, default_corpus

PROG = "run_mlm_sift.py"
MODEL_TYPES = tuple(conf.model_type for conf in MODEL_FOR_MASKED_LM_MAPPING.keys())
logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "the model checkpoint for weights initialization; not set: train from scratch"})
    model_type: Optional[str] = field(
        default=None, metadata={"help": "training from scratch without --config_name: one of " + ", ".join(MODEL_TYPES)})
    config_overrides: Optional[str] = field(
        default=None, metadata={"help": "with --model_type: override config settings, e.g. n_embd=10,resid_pdrop=0.2"})
    config_name: Optional[str] = field(default=None, metadata={"help": "config name or path, if not the model's"})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "tokenizer name or path, if not the model's"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "where models downloaded from the hub are kept"})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "use a fast (tokenizers library) tokenizer"})
    model_revision: str = field(default="main", metadata={"help": "model version: a branch, tag or commit id"})
    token: Optional[str] = field(default=None, metadata={"help": "the hub token for private models and datasets"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run the code of hub models, tokenizers and datasets (review it first)"})
    torch_dtype: Optional[str] = field(
        default=None, metadata={"help": "load --model_name_or_path in this dtype ('auto': the checkpoint's)",
                                "choices": ["auto", "bfloat16", "float16", "float32"]})
    low_cpu_mem_usage: bool = field(
        default=False, metadata={"help": "create the model as an empty shell, its parameters materialised on load"})

    def __post_init__(self):
        if self.config_overrides is not None and (self.config_name is not None or self.model_name_or_path is not None):
            raise ValueError("--config_overrides can't be used in combination with --config_name or --model_name_or_path")
        if self.model_type is not None and self.model_type not in MODEL_TYPES:
            raise ValueError(f"--model_type {self.model_type}: not a masked-LM model type (one of {', '.join(MODEL_TYPES)})")


@dataclass
class DataTrainingArguments:
    dataset_name: Optional[str] = field(default=None, metadata={"help": "a dataset name (the datasets library)"})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "the dataset's configuration name"})
    train_file: Optional[str] = field(default=None, metadata={"help": "the training data file (csv, json or txt)"})
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "an evaluation data file (csv, json or txt)"})
    overwrite_cache: bool = field(default=False, metadata={"help": "recompute the cached training and evaluation sets"})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "without a validation split: the first this percent of the train split"})
    max_seq_length: Optional[int] = field(
        default=None, metadata={"help": "tokens per sequence (default: the tokenizer's maximum, at most 1024)"})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "processes for preprocessing"})
    mlm_probability: float = field(default=0.15, metadata={"help": "share of tokens masked"})
    line_by_line: bool = field(
        default=False, metadata={"help": "each text (see --sample_by) is one sequence, truncated, not concatenated"})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "with --line_by_line: pad every sequence to max_seq_length"})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "train on at most this many sequences"})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "evaluate on at most this many sequences"})
    streaming: bool = field(default=False, metadata={"help": "stream the dataset (not supported here)"})
    sample_by: str = field(
        default="line", metadata={"help": "txt files: one text per line (run_mlm.py), per blank-line-separated "
                                          "paragraph (the pretraining job's default) or per file", "choices": TEXT_SAMPLES})
    prepared: Optional[str] = field(
        default=None, metadata={"help": "a directory of launch/prepare_data.py (--objective mlm, --seq_len = "
                                        "--max_seq_length): its memory-mapped blocks instead of a dataset or files"})
    sift_config: Optional[str] = field(
        default=None, metadata={"help": "SIFT settings as a JSON object (with --deepspeed: its 'sift' section, or both alike)"})
    sparse_mlm_head: bool = field(
        default=True, metadata={"help": "the training forward runs the MLM head on the masked positions only (the same "
                                        "loss and gradients); false: the dense head at every position"})

    def __post_init__(self):
        given = [flag for flag, value in (("--dataset_name", self.dataset_name), ("--train_file", self.train_file),
                                          ("--validation_file", self.validation_file),
                                          ("--line_by_line", self.line_by_line)) if value]
        if self.prepared and given:
            raise ValueError(f"--prepared {self.prepared} holds the blocks: give --prepared or {given[0]}, not both")
        if self.streaming:
            raise ValueError("--streaming is not supported by run_mlm_sift.py: the gross batches and an exact resume "
                             "need a dataset with a length")
        for flag, path in (("--train_file", self.train_file), ("--validation_file", self.validation_file)):
            if path is not None:
                if path.split(".")[-1] not in ("csv", "json", "txt"):
                    raise ValueError(f"{flag} {path}: should be a csv, a json or a txt file")
                if not os.path.isfile(path):
                    raise ValueError(f"{flag} {path}: file not found")
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError(f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}")


@dataclass
class MLMTrainingArguments(transformers.TrainingArguments):
    """Trainer's arguments, with run_mlm.py's ``--overwrite_output_dir`` (which transformers 5 dropped)."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "train from scratch in an output_dir that holds checkpoints or other files"})


def fail(err: BaseException):
    """One line on stderr and exit status 2 (SIFT_DS_TRACEBACK=1 shows the stack trace)."""
    if os.environ.get("SIFT_DS_TRACEBACK"):
        raise err
    sys.stderr.write(f"{PROG}: error: {' '.join(str(err).split())}\n")
    raise SystemExit(2)


def parse_sift_config(text: Optional[str]) -> Optional[SiftConfig]:
    """--sift_config as a SiftConfig, checked by the core (one-line ValueErrors naming the key)."""
    if text is None:
        return None
    try:
        section = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--sift_config is not valid JSON: {err}") from None
    if not isinstance(section, dict):
        raise ValueError(f"--sift_config must be a JSON object of sift keys, got a JSON {type(section).__name__}")
    try:
        return SiftConfig.from_dict(section)
    except ValueError as err:
        raise ValueError(f"--sift_config: {err}") from None


def last_checkpoint_to_resume(args) -> Optional[str]:
    """run_mlm.py's rule: the last checkpoint in output_dir is resumed unless --overwrite_output_dir; an
    output_dir that holds other files and no checkpoint is refused before anything is written."""
    if args.resume_from_checkpoint is not None and not os.path.isdir(args.resume_from_checkpoint):
        raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no such checkpoint directory")
    if not (os.path.isdir(args.output_dir) and args.do_train and not args.overwrite_output_dir):
        return None
    last = get_last_checkpoint(args.output_dir)
    if last is None and len(os.listdir(args.output_dir)) > 0:
        raise ValueError(f"Output directory ({args.output_dir}) already exists and is not empty. "
                         "Use --overwrite_output_dir to overcome.")
    if last is not None and args.resume_from_checkpoint is None:
        logger.info(f"Checkpoint detected, resuming training at {last}. To avoid this behavior, change "
                    "the `--output_dir` or add `--overwrite_output_dir` to train from scratch.")
    return last


def load_raw_datasets(model_args, data_args):
    """run_mlm.py's datasets: a hub dataset, or csv / json / txt files; without a validation split, the
    first --validation_split_percentage of train is held out. Neither given: CPython's documentation."""
    hub = dict(cache_dir=model_args.cache_dir, token=model_args.token)
    if data_args.dataset_name is not None:
        raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, **hub)
    elif data_args.train_file is None and data_args.validation_file is None:
        raw = datasets.DatasetDict(train=default_corpus())
    else:
        files = {k: v for k, v in (("train", data_args.train_file), ("validation", data_args.validation_file)) if v}
        extension = next(iter(files.values())).split(".")[-1]
        extra = {"sample_by": data_args.sample_by} if extension == "txt" else {}
        raw = datasets.load_dataset("text" if extension == "txt" else extension, data_files=files,
                                    cache_dir=model_args.cache_dir, **extra)
    if "validation" not in raw and "train" in raw:
        train = raw["train"]
        held = int(round(data_args.validation_split_percentage * len(train) / 100.0))  # datasets' "train[:5%]"
        raw["validation"], raw["train"] = train.select(range(held)), train.select(range(held, len(train)))
    return raw


def load_config_and_tokenizer(model_args):
    """run_mlm.py's config (--config_name, the model's, or --model_type's defaults) and tokenizer."""
    hub = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
               trust_remote_code=model_args.trust_remote_code)
    if model_args.config_name:
        config = AutoConfig.from_pretrained(model_args.config_name, **hub)
    elif model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub)
    elif model_args.model_type:
        config = CONFIG_MAPPING[model_args.model_type]()
        logger.warning("You are instantiating a new config instance from scratch.")
        if model_args.config_overrides is not None:
            config.update_from_string(model_args.config_overrides)
    else:
        raise ValueError("give --model_name_or_path, --config_name or --model_type")
    name = model_args.tokenizer_name or model_args.model_name_or_path
    if not name:
        raise ValueError("You are instantiating a new tokenizer from scratch. This is not supported by this script. "
                         "You can do it from another script, save it, and load it from here, using --tokenizer_name.")
    tokenizer = AutoTokenizer.from_pretrained(name, use_fast=model_args.use_fast_tokenizer, **hub)
    return config, tokenizer


def load_model(model_args, config, tokenizer):
    """From --model_name_or_path (embeddings grown to the tokenizer as run_mlm.py does), else from the
    config with the tokenizer's vocabulary size."""
    if model_args.model_name_or_path:
        given = {k: v for k, v in (("torch_dtype", model_args.torch_dtype),
                                   ("low_cpu_mem_usage", model_args.low_cpu_mem_usage or None)) if v is not None}
        model = AutoModelForMaskedLM.from_pretrained(
            model_args.model_name_or_path, config=config, cache_dir=model_args.cache_dir,
            revision=model_args.model_revision, token=model_args.token, trust_remote_code=model_args.trust_remote_code,
            **given)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        return model
    logger.info("Training new model from scratch")
    config.vocab_size = len(tokenizer)
    return AutoModelForMaskedLM.from_config(config, trust_remote_code=model_args.trust_remote_code)


def sequence_length(data_args, tokenizer, config) -> int:
    """run_mlm.py's max_seq_length, which must fit the model's position embeddings."""
    length = min(data_args.max_seq_length or 1024, tokenizer.model_max_length)
    if data_args.max_seq_length is not None and data_args.max_seq_length > tokenizer.model_max_length:
        logger.warning(f"max_seq_length {data_args.max_seq_length} exceeds the tokenizer's maximum "
                       f"({tokenizer.model_max_length}); using {length}")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and length > positions:
        raise ValueError(f"--max_seq_length {length} exceeds the model's max_position_embeddings ({positions})"
                         + ("" if data_args.max_seq_length else " (the default is the tokenizer's maximum, at most 1024)"))
    return length


def tokenize_datasets(raw, data_args, training_args, tokenizer, max_seq_length):
    """run_mlm.py's preprocessing: each text truncated (--line_by_line), or all concatenated and cut
    into blocks of max_seq_length (the remainder of each map batch dropped)."""
    split = "train" if training_args.do_train else "validation"
    column_names = raw[split].column_names
    text_column_name = "text" if "text" in column_names else column_names[0]
    common = dict(batched=True, num_proc=data_args.preprocessing_num_workers,
                  load_from_cache_file=not data_args.overwrite_cache)
    if data_args.line_by_line:
        padding = "max_length" if data_args.pad_to_max_length else False

        def tokenize_lines(examples):
            lines = [line for line in examples[text_column_name] if len(line) > 0 and not line.isspace()]
            return tokenizer(lines, padding=padding, truncation=True, max_length=max_seq_length,
                             return_special_tokens_mask=True)

        with training_args.main_process_first(desc="dataset map tokenization"):
            return raw.map(tokenize_lines, remove_columns=column_names, desc="Running tokenizer on dataset line_by_line",
                           **common)

    def tokenize_function(examples):
        return tokenizer(examples[text_column_name], return_special_tokens_mask=True)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]]) // max_seq_length * max_seq_length
        return {k: [t[i: i + max_seq_length] for i in range(0, total_length, max_seq_length)]
                for k, t in concatenated.items()}

    with training_args.main_process_first(desc="dataset map tokenization"):
        tokenized = raw.map(tokenize_function, remove_columns=column_names,
                            desc="Running tokenizer on every text in dataset", **common)
    with training_args.main_process_first(desc="grouping texts together"):
        return tokenized.map(group_texts, desc=f"Grouping texts in chunks of {max_seq_length}", **common)


def prepared_datasets(data_args, tokenizer, max_seq_length: int, tokenizer_name: str) -> dict:
    """--prepared's blocks, checked against the tokenizer and --max_seq_length; without a validation
    split, the first --validation_split_percentage of the blocks is held out (as run_mlm.py holds out
    the first texts)."""
    manifest, blocks = open_prepared(data_args.prepared)
    check_manifest(manifest, data_args.prepared, max_seq_length, "mlm", tokenizer_digest(tokenizer), tokenizer_name,
                   seq_flag="--max_seq_length")
    held = int(round(data_args.validation_split_percentage * len(blocks) / 100.0))
    return {"validation": PreparedRows(blocks.select(range(held))),
            "train": PreparedRows(blocks.select(range(held, len(blocks))))}


def take(tokenized, split: str, limit: Optional[int], flag: str):
    if split not in tokenized:
        raise ValueError(f"{flag} requires a {split} dataset")
    dataset = tokenized[split]
    return dataset if limit is None else dataset.select(range(min(len(dataset), limit)))


def preprocess_logits_for_metrics(logits, labels):
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)


def compute_metrics(eval_preds):
    """The masked tokens' accuracy (run_mlm.py's metric)."""
    preds, labels = eval_preds
    mask = labels.reshape(-1) != -100
    return {"accuracy": float(np.mean(preds.reshape(-1)[mask] == labels.reshape(-1)[mask]))}


def setup():
    """Everything before training, each user error a ValueError or OSError: (trainer, checkpoint, args...)."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, MLMTrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    if not (training_args.do_train or training_args.do_eval):
        raise ValueError("nothing to do: give --do_train and/or --do_eval (as run_mlm.py)")
    sift = parse_sift_config(data_args.sift_config)
    if sift is not None:  # before any data or model is loaded
        sift.gross_batch_size(training_args.per_device_train_batch_size, "per_device_train_batch_size")
    last_checkpoint = last_checkpoint_to_resume(training_args)
    set_seed(training_args.seed)

    config, tokenizer = load_config_and_tokenizer(model_args)
    max_seq_length = sequence_length(data_args, tokenizer, config)
    if data_args.prepared:  # (not in run_mlm.py: launch/prepare_data.py's blocks, memory-mapped)
        tokenized = prepared_datasets(data_args, tokenizer, max_seq_length,
                                      model_args.tokenizer_name or model_args.model_name_or_path)
        model = load_model(model_args, config, tokenizer)
    else:
        raw = load_raw_datasets(model_args, data_args)
        model = load_model(model_args, config, tokenizer)
        tokenized = tokenize_datasets(raw, data_args, training_args, tokenizer, max_seq_length)
    train = take(tokenized, "train", data_args.max_train_samples, "--do_train") if training_args.do_train else None
    evaluation = take(tokenized, "validation", data_args.max_eval_samples, "--do_eval") \
        if training_args.do_eval else None
    pad_to_multiple_of_8 = data_args.line_by_line and training_args.fp16 and not data_args.pad_to_max_length
    trainer = SiftTrainer(  # run_mlm.py: Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=data_args.mlm_probability,
                                                      pad_to_multiple_of=8 if pad_to_multiple_of_8 else None),
        compute_metrics=compute_metrics if training_args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if training_args.do_eval else None,
        sift=sift,  # (not in run_mlm.py: None reads the --deepspeed config's "sift" section)
        sparse_mlm_head=data_args.sparse_mlm_head,  # (not in run_mlm.py: SiftTrainer's default is True)
    )
    return trainer, training_args.resume_from_checkpoint or last_checkpoint, model_args, data_args, training_args


def main():
    try:
        trainer, checkpoint, model_args, data_args, training_args = setup()
    except (ValueError, OSError, TypeError, datasets.exceptions.DatasetGenerationError) as err:
        fail(err)
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()  # the tokenizer too
        metrics = train_result.metrics
        metrics["train_samples"] = len(trainer.train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(trainer.eval_dataset)
        try:
            metrics["perplexity"] = math.exp(metrics["eval_loss"])
        except OverflowError:
            metrics["perplexity"] = float("inf")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "fill-mask"}
    if data_args.dataset_name is not None:
        kwargs["dataset_tags"] = data_args.dataset_name
        kwargs["dataset"] = " ".join(filter(None, (data_args.dataset_name, data_args.dataset_config_name)))
        if data_args.dataset_config_name is not None:
            kwargs["dataset_args"] = data_args.dataset_config_name
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)
    # Every process leaves the process group together: a process that exits while another still holds
    # it can abort at exit (SIGABRT, "terminate called without an active exception"), failing the launch.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
