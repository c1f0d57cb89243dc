"""The job's tokenizer and blocks: ``--prepared``'s memory-mapped ones, or the corpus read, a tokenizer
given or trained on rank 0, and blocks tokenized in the job; then the holdout cut and the vocabulary check
against a resumed checkpoint."""
from __future__ import annotations

import dataclasses
import logging
import os

import torch.distributed as dist

from . import corpus as corpus_lib, data as data_lib, tokenizer as tok
from .plan import RunPlan
from .prepared import prepared_data
from .runtime import main_process_first
from .vocab_check import check_vocabulary, first_texts

logger = logging.getLogger("sift_ds.pretrain")


def prepare_data(plan: RunPlan):
    """(tokenizer, PretrainData): --prepared's blocks; or the corpus, then the tokenizer, then tokenized
    blocks, with each node's first rank filling the ``datasets`` cache before the others read it."""
    opts = plan.options
    if opts.prepared:  # memory-mapped blocks: no tokenization, no rank waiting on another
        tokenizer, data = prepared_data(opts)
        logger.info("tokenizer: %s; data: --prepared %s", tokenizer.name_or_path, opts.prepared)
        return tokenizer, split_holdout(opts, data)
    with main_process_first():
        corpus = corpus_lib.load_corpus(plan.data_files, opts.text_field, opts.dataset_name, opts.dataset_config,
                                        opts.dataset_split, opts.cache_dir, opts.sample_by)
    tokenizer, source = obtain_tokenizer(plan, corpus)
    logger.info("tokenizer: %s (%d tokens)", source, len(tokenizer))
    if opts.tokenizer:  # a given vocabulary must fit the corpus (a trained one is the corpus's own)
        try:
            check_vocabulary(tokenizer, first_texts(row["text"] for row in corpus))
        except ValueError as err:
            raise ValueError(f"--tokenizer {opts.tokenizer}: {err}") from None
    with main_process_first():
        data = data_lib.build_pretrain_data(corpus, tokenizer, opts.seq_len, opts.objective, opts.val_fraction,
                                            opts.max_val_samples, opts.data_seed, opts.cache_dir)
    return tokenizer, split_holdout(opts, data)


def split_holdout(opts, data):
    """``data`` logged, with its training blocks cut by --holdout_fraction / --train_on."""
    logger.info("data: %d documents, %d tokens -> %d train / %d validation blocks of %d tokens (%s)",
                data.num_documents, data.num_tokens, len(data.train), len(data.val), opts.seq_len, opts.objective)
    if opts.holdout_fraction:
        rest, holdout = data_lib.holdout_split(data.train, opts.holdout_fraction, opts.data_seed)
        data = dataclasses.replace(data, train=holdout if opts.train_on == "holdout" else rest)
        logger.info("holdout: %d blocks held out, %d rest; training on the %s", len(holdout), len(rest), opts.train_on)
    return data


def obtain_tokenizer(plan: RunPlan, corpus):
    """The tokenizer: --tokenizer; or, when resuming, the run's saved one; or a vocabulary (WordPiece,
    or byte-level BPE for a causal LM) trained on rank 0 and sent to the other ranks (so every rank has
    the same vocabulary)."""
    opts = plan.options
    causal = opts.objective == "clm"
    run_tokenizer = os.path.join(plan.output_dir, "tokenizer")
    if opts.tokenizer:
        return tok.load_tokenizer(opts.tokenizer, causal), opts.tokenizer
    if plan.resume is not None:
        # The resumed run's own: in this output_dir, or next to the checkpoint directory resumed from.
        for path in (run_tokenizer, os.path.join(os.path.dirname(os.path.abspath(plan.resume.load_dir)), "tokenizer")):
            if os.path.isdir(path):
                try:
                    return tok.load_tokenizer(path, causal), f"{path} (the resumed run's)"
                except ValueError as err:
                    raise ValueError(f"the resumed run's tokenizer {path}: {err}") from None
    train = tok.train_bpe if causal else tok.train_wordpiece
    payload = [None]
    if dist.get_rank() == 0:
        payload = [tok.to_json(train(tok.batched_texts(corpus), opts.vocab_size))]
    dist.broadcast_object_list(payload, src=0)
    kind = "byte-level BPE" if causal else "WordPiece"
    source = f"{kind} trained on the corpus (vocab_size {opts.vocab_size}), saved to {run_tokenizer}"
    return tok.from_json(payload[0], causal=causal), source


def check_vocab(plan: RunPlan, vocab_size: int) -> None:
    """The resumed checkpoint's vocabulary size (from its manifest) against this run's tokenizer."""
    recorded = plan.resume.run.get("vocab_size") if plan.resume is not None else None
    if recorded is not None and recorded != vocab_size:
        raise ValueError(f"--resume {plan.resume.path}: the checkpoint has a vocabulary of {recorded} tokens, this "
                         f"run's tokenizer has {vocab_size} (--tokenizer / --vocab_size differ from the resumed run's)")
