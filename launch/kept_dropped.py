#!/usr/bin/env python
"""What a criterion keeps and drops: re-make a run's gross batches, select from each with the
model of a checkpoint through the library's selection core, and compare the kept with the dropped
blocks (length, unique-token share, unigram entropy, share of code, markup and tables), with
example texts (sift_ds.study.kept_dropped defines the measures).

    python launch/kept_dropped.py --checkpoint runs/x/checkpoints/global_step300 --batches 50 \\
        -- --ds_config ds_configs/l12h128_cpu_study.json --data corpus.jsonl.xz --tokenizer TOKENIZER_DIR

Everything after '--' is the run's own pretraining arguments (its data, tokenizer, seed and SIFT
settings: the criterion, exit layer and keep ratio that select). The batches are those the run
draws from batch --first_batch of its first epoch on (default: the checkpoint's step), on one rank.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import List, Optional

import numpy as np

from sift_ds.adapters import detect_adapter
from sift_ds.offline.model_scores import checkpoint_model
from sift_ds.score_file import attach_scores
from sift_ds.offline.run_blocks import fail, run_blocks, split_argv
from sift_ds.pretrain.loader import GrossBatchLoader, make_collator
from sift_ds.selection import select
from sift_ds.study.kept_dropped import block_profile, compare, kept_agreement, report

PROG = "kept_dropped.py"



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                usage=f"{PROG} --checkpoint DIR [options] -- PRETRAIN_ARGS...")
    p.add_argument("--checkpoint", required=True, help="the scoring model: <run>/checkpoints/global_stepN")
    p.add_argument("--batches", type=int, default=50, help="gross batches to select from")
    p.add_argument("--first_batch", type=int, help="the first batch of the epoch (default: the checkpoint's step)")
    p.add_argument("--examples", type=int, default=3, help="example texts per side")
    p.add_argument("--title", help="the report's heading (default: the criterion and the checkpoint)")
    p.add_argument("--out", help="also write the report to this Markdown file")
    p.add_argument("--save_selection", metavar="NPZ", help="also write the block indices and kept flags (numpy .npz: "
                                                           "block, kept), to compare two criteria's selections")
    p.add_argument("--against", metavar="NPZ", help="another criterion's --save_selection over the same batches: "
                                                    "report the share of its kept rows this selection keeps too")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    own, run_args = split_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    try:
        plan, tokenizer, data = run_blocks(run_args)
        sift = dataclasses.replace(plan.sift, scope="local")
        if not sift.enabled:
            raise ValueError("the run's SIFT settings are off (sift.enabled false): nothing selects")
        model = checkpoint_model(plan, tokenizer, args.checkpoint)
        train = attach_scores(data.train, sift, tokenizer)
        loader = GrossBatchLoader(train, make_collator(plan.options, tokenizer, model), plan.gross_batch,
                                  seed=plan.options.seed, prefetch=False)
        first = args.first_batch if args.first_batch is not None else int(os.path.basename(
            args.checkpoint.rstrip("/")).removeprefix("global_step") or 0)
        step = max(sift.start_step, first)
        adapter, rows = detect_adapter(model), train.with_format("numpy")
        profiles, kept, texts, blocks = [], [], [], []
        for position in range(first, first + args.batches):
            epoch, p = divmod(position, loader.batches_per_epoch)
            sel = select(adapter, sift, loader.batch_at(epoch, p), step, 0, plan.batch.micro)
            block_ids = loader.indices(epoch, p)
            blocks += block_ids.tolist()
            chunk = rows[block_ids.tolist()]
            for i in range(len(block_ids)):
                text = tokenizer.decode(chunk["input_ids"][i], skip_special_tokens=True)
                special = chunk["special_tokens_mask"][i] if "special_tokens_mask" in chunk else None
                profiles.append(block_profile(chunk["input_ids"][i], special, text))
                texts.append(text)
            kept += sel.kept.cpu().tolist()
        result = compare(profiles, np.array(kept), texts, args.examples)
        agreement = None
        if args.against:
            with np.load(args.against) as other:
                agreement = kept_agreement(np.array(blocks), np.array(kept), other["block"], other["kept"])
    except (ValueError, FileNotFoundError, OSError) as err:
        fail(PROG, err)
    title = args.title or (f"{sift.criterion} at exit {sift.exit_layer}, keep {sift.keep_ratio}: {args.batches} "
                           f"gross batches from batch {first}, model {args.checkpoint}")
    text = report(result, title)
    if agreement is not None:
        text += (f"\nOf the rows that {args.against} keeps, this selection keeps {agreement:.3f} "
                 f"(chance: the keep ratio, {sift.keep_ratio}).\n")
    print(text)
    if args.save_selection:
        np.savez(args.save_selection, block=np.array(blocks), kept=np.array(kept, dtype=bool))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
