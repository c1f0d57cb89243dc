#!/usr/bin/env python
"""Where a SIFT step's time goes, stage by stage, against the FLOPs model (one process, one rank).

    taskset -c 1 env OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu python benchmarks/profile_selection.py \\
        --model ds_configs/models/bert_L4_H128.json --vocab_size 8192 --seq_len 128 --micro 16 --exit_layer 1

Stages of one step (medians over ``--reps`` steps, after ``--warmup`` untimed ones; the selection
and the training step alternate, as in a run):

* ``data``: reading and masking a gross batch (``GrossBatchLoader``, prefetch off) against a
  micro-batch: the data SIFT adds is their difference;
* the selection, as ``SiftEngine.select`` runs it (``select``), and its parts run one by one with
  the library's own functions: ``positions`` (labelled positions and label check, on the host),
  ``prefix`` (embeddings + first k layers, no grad), ``head`` (gather of the labelled rows + head
  transform), ``vocab`` (vocab projection and per-row reduction), ``topk``, ``take`` (kept rows);
* ``train``: forward, backward and AdamW step of the DeepSpeed engine on the kept micro-batch, with
  the MLM head on the masked positions only, as the pretraining job trains (``--dense_head``: on
  every position, as HF's ``BertForMaskedLM`` does).

The selection share is select / (select + train), as ``sift/selection_share`` measures it; the
model share is ``FlopsModel``'s selection FLOPs over selection + training FLOPs. The exchange of
rows between ranks does not arise at one rank (docs/benchmarks.md models it separately).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import datasets  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

import sift_ds  # noqa: E402
from sift_ds import selector  # noqa: E402
from sift_ds.adapters import early_exit_hidden  # noqa: E402
from sift_ds.pretrain.loader import GrossBatchLoader, MaskingCollator  # noqa: E402
from sift_ds.pretrain.metrics import FlopsModel  # noqa: E402
from sift_ds.pretrain.models import build_bert  # noqa: E402
from sift_ds.row_exchange import take_rows  # noqa: E402
from sift_ds.criteria.early_exit import check_labels, eval_mode, labelled_positions  # noqa: E402
from sift_ds.ports import free_port  # noqa: E402
from sift_ds.zero import full_parameters  # noqa: E402

TOKENIZER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ds_configs", "tokenizers",
                         "pydoc_wordpiece_4096")


def median_seconds(*fns, reps: int, warmup: int):
    """Median wall time of each of ``fns``, called in turn ``reps`` times (after ``warmup`` untimed
    rounds): interleaved, so that slow drifts of the machine reach every one alike, and each runs
    with the caches the one before it left, as selection and training alternate in a run."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    medians = [statistics.median(spent) for spent in times]
    return medians[0] if len(fns) == 1 else medians


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="a preset name or an HF config (as the pretraining job's --model)")
    p.add_argument("--vocab_size", type=int, default=4096)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--micro", type=int, default=16, help="kept rows per step (train_micro_batch_size_per_gpu)")
    p.add_argument("--keep_ratio", type=float, default=0.5)
    p.add_argument("--exit_layer", type=int, default=1)
    p.add_argument("--criterion", default="entropy", choices=("loss", "entropy"))
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dense_head", action="store_true",
                   help="train with the MLM head on every position (HF's BertForMaskedLM) rather than on the "
                        "masked ones only (the pretraining job's default, --sparse_mlm_head)")
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    torch.manual_seed(0)
    model = build_bert(args.model, vocab_size=args.vocab_size, max_position_embeddings=max(512, args.seq_len),
                       sparse_head=not args.dense_head)
    cfg = {"train_micro_batch_size_per_gpu": args.micro, "gradient_accumulation_steps": 1,
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
           "zero_optimization": {"stage": 1}, "steps_per_print": 10 ** 9,
           "sift": {"exit_layer": args.exit_layer, "keep_ratio": args.keep_ratio, "scope": "local",
                    "criterion": args.criterion, "kernel": "torch",
                    "selection_start_step": 0, "start_after_lr_peak": True}}  # a constant lr: the measured step selects
    engine = sift_ds.initialize(model=model, config=cfg)[0]
    gross, cfg_sift, adapter = engine.gross_batch_size, engine.sift_config, engine.adapter

    tokenizer = PreTrainedTokenizerFast.from_pretrained(TOKENIZER)
    if args.vocab_size < len(tokenizer):  # the masking draws random replacement tokens from the tokenizer
        raise SystemExit(f"profile_selection.py: error: --vocab_size {args.vocab_size} is smaller than the "
                         f"tokenizer's {len(tokenizer)} ({TOKENIZER})")
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(5, min(args.vocab_size, len(tokenizer)), (8 * gross, args.seq_len), generator=g)
    table = datasets.Dataset.from_dict({"input_ids": blocks.tolist(),
                                        "token_type_ids": torch.zeros_like(blocks).tolist(),
                                        "attention_mask": torch.ones_like(blocks).tolist()})
    collator = MaskingCollator(tokenizer)
    loaders = {rows: GrossBatchLoader(table, collator, rows, seed=0, prefetch=False) for rows in (gross, args.micro)}
    batch = loaders[gross].next_batch()
    labels = batch["labels"]
    flat, seq = labelled_positions(adapter, batch)
    modules = adapter.selection_modules(args.exit_layer)

    def prefix():
        with torch.no_grad(), full_parameters(modules), eval_mode(modules):
            return early_exit_hidden(adapter, batch, args.exit_layer)

    hidden = prefix()

    def head():
        with torch.no_grad(), eval_mode(modules):
            return adapter.head_transform(hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat))

    rows = head()
    weight, bias = adapter.vocab_projection()
    targets = labels.reshape(-1).index_select(0, flat)

    def vocab():
        with torch.no_grad():
            return sift_ds.kernels.packed_sequence_scores(rows, weight, bias, targets, seq, gross,
                                                          criterion=args.criterion, backend="torch",
                                                          check_targets=False)

    scores = vocab()
    step = cfg_sift.start_step  # a selecting step
    kept_idx = selector.select_by_score(scores, args.micro, cfg_sift, step, 0)
    kept = engine.select(batch).batch

    def train():
        loss = engine(**kept).loss
        engine.backward(loss)
        engine.step()

    r, w = args.reps, args.warmup
    t = {"data_gross": median_seconds(loaders[gross].next_batch, reps=r, warmup=w),
         "data_micro": median_seconds(loaders[args.micro].next_batch, reps=r, warmup=w),
         "positions": median_seconds(lambda: check_labels(adapter, labels, labelled_positions(adapter, batch)),
                                     reps=r, warmup=w),
         "prefix": median_seconds(prefix, reps=r, warmup=w),
         "head": median_seconds(head, reps=r, warmup=w),
         "vocab": median_seconds(vocab, reps=r, warmup=w),
         "topk": median_seconds(lambda: selector.select_by_score(scores, args.micro, cfg_sift, step, 0), reps=r,
                                warmup=w),
         "take": median_seconds(lambda: take_rows(batch, kept_idx), reps=r, warmup=w)}
    # The share's two terms alternate, as in a run: select, train step, select, ...
    t["select"], t["train"] = median_seconds(lambda: engine.select(batch), train, reps=r, warmup=w)
    parts = ("positions", "prefix", "head", "vocab", "topk", "take")
    masked = float((labels != -100).float().mean())
    flops = FlopsModel.for_masked_lm(model, args.seq_len, args.exit_layer, masked_fraction=masked,
                                     sparse_head=not args.dense_head)
    select_flops = flops.select_per_token * gross * args.seq_len
    train_flops = flops.train_per_token * args.micro * args.seq_len
    measured = t["select"] / (t["select"] + t["train"])
    modelled = select_flops / (select_flops + train_flops)
    extra_data = t["data_gross"] - t["data_micro"]
    overhead = (t["select"] + extra_data) / (t["select"] + t["train"] + t["data_gross"])
    cfg_model = model.config
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
        "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": f"L{cfg_model.num_hidden_layers}-H{cfg_model.hidden_size}", "vocab": cfg_model.vocab_size,
        "seq_len": args.seq_len, "gross": gross, "micro": args.micro, "exit_layer": args.exit_layer,
        "criterion": args.criterion, "training_head": "dense" if args.dense_head else "sparse",
        "seconds": t, "unaccounted_select_s": t["select"] - sum(t[p] for p in parts),
        "selection_share": measured, "model_share": modelled, "measured_over_model": measured / modelled,
        "overhead_share": overhead,
    }
    print(f"\n{result['model']} seq {args.seq_len}, gross {gross} -> {args.micro}, exit {args.exit_layer}, "
          f"{args.criterion}, {result['training_head']} MLM head in training; torch {torch.__version__}, "
          f"{result['threads']} thread(s), cores {result['cores']}")
    print("| stage | median ms | share of select |")
    print("|---|---|---|")
    for name in parts:
        print(f"| {name} | {1e3 * t[name]:.3f} | {t[name] / t['select']:.2f} |")
    print(f"| (unaccounted) | {1e3 * result['unaccounted_select_s']:.3f} | "
          f"{result['unaccounted_select_s'] / t['select']:.2f} |")
    print(f"| **select** (engine.select) | {1e3 * t['select']:.3f} | 1.00 |")
    print(f"| train step (fwd + bwd + AdamW, micro) | {1e3 * t['train']:.3f} | |")
    print(f"| data: gross batch / micro-batch | {1e3 * t['data_gross']:.3f} / {1e3 * t['data_micro']:.3f} | |")
    print(f"selection share {measured:.3f} | FLOPs model {modelled:.3f} | measured / model {measured / modelled:.2f}"
          f" | SIFT overhead share (selection + extra data) {overhead:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
