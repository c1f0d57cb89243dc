#!/usr/bin/env python
"""Offline sifting: score a pretraining run's training blocks once and store the scores in a file,
which runs then select by (criterion "stored") or take a stored reference loss from (criterion
"reducible"), with no model pass per step.

    python launch/score_corpus.py --out runs/scores/linux_docs.npz --scores unigram_entropy,unique_share \\
        -- --ds_config ds_configs/l12h128_cpu_study.json --data corpus.jsonl.xz --tokenizer TOKENIZER_DIR

Everything after '--' is the pretraining job's own arguments (launch/pretrain_bert.py): the same
data, tokenizer, --seq_len and split options give the same training blocks, which the file is keyed
to (a run with other blocks refuses it). Scores: unigram_entropy, unique_share (free);
frozen_entropy (the exit-k entropy of --checkpoint, e.g. the end of SIFT's warm-up);
reference_loss (the loss of the --reference model, trained with --train_on holdout).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import torch

from sift_ds.offline.model_scores import checkpoint_model
from sift_ds.criteria.columns import REFERENCE_LOSS
from sift_ds.score_file import write_scores
from sift_ds.offline.scoring import FROZEN_ENTROPY, SCORE_NAMES, score_blocks, training_cost
from sift_ds.offline.run_blocks import fail, run_blocks, split_argv
from sift_ds.pretrain.loader import make_collator
from transformers import AutoModelForMaskedLM

PROG = "score_corpus.py"



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                usage=f"{PROG} --out FILE [options] -- PRETRAIN_ARGS...")
    p.add_argument("--out", required=True, help="the score file to write (.npz)")
    p.add_argument("--scores", default="unigram_entropy,unique_share",
                   help=f"comma-separated score names: {', '.join(SCORE_NAMES)}")
    p.add_argument("--checkpoint", help=f"{FROZEN_ENTROPY}: a pretraining checkpoint, <run>/checkpoints/global_stepN")
    p.add_argument("--exit_layer", type=int, default=1, help=f"{FROZEN_ENTROPY}: the exit layer")
    p.add_argument("--reference", help=f"{REFERENCE_LOSS}: the reference model directory (its run's final/)")
    p.add_argument("--masks", type=int, default=4, help="model scores: maskings averaged per block")
    p.add_argument("--batch_size", type=int, default=64, help="model scores: blocks per forward")
    p.add_argument("--seed", type=int, default=0, help="model scores: seed of the maskings")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    own, run_args = split_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    names = [n.strip() for n in args.scores.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCORE_NAMES]
    if unknown or not names:
        fail(PROG, f"--scores {args.scores!r}: unknown score(s) {unknown}; known: {', '.join(SCORE_NAMES)}")
    if FROZEN_ENTROPY in names and not args.checkpoint:
        fail(PROG, f"--scores {FROZEN_ENTROPY} needs --checkpoint")
    if REFERENCE_LOSS in names and not args.reference:
        fail(PROG, f"--scores {REFERENCE_LOSS} needs --reference")
    try:
        plan, tokenizer, data = run_blocks(run_args)
        exit_model = reference = None
        if args.checkpoint:
            exit_model = checkpoint_model(plan, tokenizer, args.checkpoint)
        if args.reference:
            reference = AutoModelForMaskedLM.from_pretrained(args.reference)
        model = exit_model if exit_model is not None else reference
        collator = make_collator(plan.options, tokenizer, model) if model is not None else None
        with torch.no_grad():
            scores, about = score_blocks(names, data.train, collator, exit_model, args.exit_layer, reference,
                                         args.masks, args.batch_size, args.seed)
        if args.checkpoint:
            about[FROZEN_ENTROPY]["checkpoint"] = args.checkpoint
        if args.reference:
            about[REFERENCE_LOSS]["reference_training"] = training_cost(args.reference)
            about[REFERENCE_LOSS]["reference_config"] = reference.config.to_diff_dict()  # its FLOPs, for the charge
        meta = write_scores(args.out, scores, data.train, tokenizer, about)
    except (ValueError, FileNotFoundError, OSError) as err:
        fail(PROG, err)
    print(f"{PROG}: wrote {args.out}: {meta['num_blocks']} blocks, scores {', '.join(scores)}")
    print(json.dumps(meta["scores"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
