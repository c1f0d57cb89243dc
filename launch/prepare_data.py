#!/usr/bin/env python
"""Prepare a pretraining corpus once, with N worker processes, into memory-mapped shards that every
rank of a training job maps (``--prepared OUT``) instead of tokenizing the corpus at each start:

    python launch/prepare_data.py --data 'corpus/**/*.txt' --tokenizer tok/ --seq_len 128 --workers 16 --out prep/
    python launch/prepare_data.py --dataset_name wikitext --dataset_config wikitext-103-raw-v1 --out prep/
    python launch/prepare_data.py --megatron_prefix my-bert_text_sentence --tokenizer tok/ --out prep/
    deepspeed launch/pretrain_bert.py --ds_config ds_configs/bert_base_zero2_bf16_sift.json --prepared prep/

An interrupted preparation resumes shard by shard when run again with the same arguments; a finished
one is left as it is. See docs/usage.md, "Preparing a large corpus". Errors are one line on stderr
and exit status 2 (SIFT_DS_TRACEBACK=1 shows the stack trace).
"""
import argparse
import logging
import os
import sys

import datasets

from sift_ds.prepare.pipeline import Request, prepare
from sift_ds.pretrain.corpus import TEXT_SAMPLES
from sift_ds.pretrain.data import OBJECTIVES

PROG = "prepare_data.py"


def build_parser() -> argparse.ArgumentParser:
    r = Request(out="")
    p = argparse.ArgumentParser(prog=PROG, description="Prepare a pretraining corpus once, with N worker processes, "
                                "into memory-mapped shards that a training job maps with --prepared OUT.")
    src = p.add_argument_group("corpus (one of --data, --dataset_name, --megatron_prefix; none: CPython's pydoc_data)")
    src.add_argument("--data", action="append", metavar="PATH_OR_GLOB",
                     help="text files (see --sample_by) or JSON-lines files (.json, .jsonl, optionally .gz/.xz/.bz2/"
                          ".zst); repeatable; globs with ** recurse")
    src.add_argument("--text_field", default=r.text_field, help="text field of JSON lines / datasets (%(default)s)")
    src.add_argument("--sample_by", default=r.sample_by, choices=TEXT_SAMPLES,
                     help="what one document of a text file is (%(default)s)")
    src.add_argument("--dataset_name", help="a `datasets` hub name or a directory of data files")
    src.add_argument("--dataset_config", help="the dataset's configuration name")
    src.add_argument("--dataset_split", default=r.dataset_split, help="the dataset's split (%(default)s)")
    src.add_argument("--megatron_prefix", action="append", metavar="PREFIX",
                     help="a Megatron indexed dataset (PREFIX.bin + PREFIX.idx, from preprocess_data.py), read with "
                          "megatron-core; repeatable; needs the --tokenizer it was made with")
    src.add_argument("--cache_dir", help="`datasets` cache (the library's default)")
    src.add_argument("--max_document_chars", type=int, default=r.max_document_chars,
                     help="skip (and count) documents longer than this many characters; 0: no limit (%(default)s)")
    blocks = p.add_argument_group("blocks (must match the training run's)")
    blocks.add_argument("--tokenizer", help="tokenizer directory, tokenizer.json or hub name; none: train one on the "
                                            "corpus (WordPiece, or byte-level BPE for clm), saved in OUT/tokenizer")
    blocks.add_argument("--vocab_size", type=int, default=r.vocab_size, help="of a trained tokenizer (%(default)s)")
    blocks.add_argument("--seq_len", type=int, default=r.seq_len, help="tokens per block (%(default)s)")
    blocks.add_argument("--objective", default=r.objective, choices=OBJECTIVES, help="packing (%(default)s)")
    blocks.add_argument("--data_seed", type=int, default=r.data_seed, help="seed of the mlm+nsp pairs (%(default)s)")
    work = p.add_argument_group("work")
    work.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                      help="worker processes (default: the CPUs this process may use, %(default)s)")
    work.add_argument("--documents_per_shard", type=int, default=r.documents_per_shard,
                      help="documents per shard, the unit of work and of resumption (%(default)s)")
    work.add_argument("--out", required=True, help="the prepared directory (created; a finished one is left as it is)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] [%(name)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sift_ds").setLevel(logging.INFO)  # its progress; other libraries' warnings only
    datasets.disable_progress_bars()  # progress is logged shard by shard
    try:
        manifest = prepare(Request(**vars(args)))
    except (ValueError, OSError) as err:
        if os.environ.get("SIFT_DS_TRACEBACK"):
            raise
        sys.stderr.write(f"{PROG}: error: {' '.join(str(err).split())}\n")
        raise SystemExit(2)
    print(f"{PROG}: {args.out}: {manifest['num_blocks']} blocks of {manifest['seq_len']} tokens "
          f"({manifest['objective']}), {manifest['num_documents']} documents, {manifest['num_tokens']} tokens")


if __name__ == "__main__":
    main()
