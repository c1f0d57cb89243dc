#!/usr/bin/env python
"""The selection cost of every criterion per step, measured against its FLOPs model.

    python benchmarks/bench_criteria.py --model ds_configs/models/bert_L12_H128.json \\
        --reference ds_configs/models/bert_L4_H128.json --vocab 8192 --seq_len 128 --micro 16 --keep_ratio 0.5 \\
        --json selection_cost.json

Times ``sift_ds.selection.select`` on one rank's gross batch (random token ids, 15 % masked) for each
criterion at exit k: entropy and loss; the frequency-corrected loss (running and unigram baselines);
unbiased importance sampling; the reducible loss with a stored reference (the exit-k loss plus a
column: no extra model) and with an online reference (plus the reference model's full forward on the
gross batch); with the training forward + backward of the kept micro-batch for scale; median of
--reps after one warm-up. Beside each, the job's FLOPs model (``sift_ds.pretrain.metrics.charge_criterion``:
the selection pass per gross token, plus for online the reference model's own forward), and the
measured share over the modelled one ("cost / model": 1 is the FLOPs floor). Prints a Markdown table;
``--json`` writes the rows as data. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from transformers import BertConfig

from sift_ds.adapters import detect_adapter
import numpy as np

from sift_ds.config import SiftConfig
from sift_ds.pretrain.metrics import FlopsModel, charge_criterion
from sift_ds.pretrain.models import build_model
from sift_ds.criteria.columns import REFERENCE_COLUMN
from sift_ds.selection import select


def model_of(path: str, vocab: int, seq_len: int, sparse_head: bool):
    config = BertConfig.from_json_file(path)
    config.vocab_size, config.max_position_embeddings = vocab, max(seq_len, config.max_position_embeddings)
    return build_model(config, "mlm", sparse_head=sparse_head)


def gross_batch(rows: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, seq_len), generator=g)
    masked = torch.rand(rows, seq_len, generator=g) < 0.15
    return {"input_ids": torch.where(masked, torch.full_like(ids, 4), ids), "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids), "labels": torch.where(masked, ids, torch.full_like(ids, -100))}


def timed(fn, reps: int, device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ds_configs/models/bert_L12_H128.json")
    p.add_argument("--reference", default="ds_configs/models/bert_L4_H128.json")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--micro", type=int, default=16)
    p.add_argument("--keep_ratio", type=float, default=0.5)
    p.add_argument("--exit_layer", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default="", help="also write the rows and the set-up to this JSON file")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = model_of(args.model, args.vocab, args.seq_len, sparse_head=True).to(device)
    reference = model_of(args.reference, args.vocab, args.seq_len, sparse_head=False)
    gross = round(args.micro / args.keep_ratio)
    batch = gross_batch(gross, args.seq_len, args.vocab)
    adapter = detect_adapter(model)
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        stored_file = os.path.join(folder, "stored.npz")
        open(stored_file, "wb").close()  # the column below stands for the file's attached values
        counts = os.path.join(folder, "unigram_counts.npy")
        np.save(counts, np.random.default_rng(0).integers(1, 1000, args.vocab))
        common = dict(exit_layer=args.exit_layer, keep_ratio=args.keep_ratio, scope="local", kernel="auto",
                      selection_start_step=0)  # select() at step 0 times the selection, not the warm-up's subset
        criteria = {"entropy": {"criterion": "entropy"},
                    "loss": {"criterion": "loss"},
                    "freq_loss, running baseline": {"criterion": "freq_loss"},
                    "freq_loss, unigram baseline": {"criterion": "freq_loss", "frequency_baseline": "unigram",
                                                    "frequency_table": counts},
                    "importance": {"criterion": "importance"},
                    "reducible, stored reference": {"criterion": "reducible", "reference": stored_file},
                    "reducible, online reference": {"criterion": "reducible", "reference": folder}}
        configs = {name: SiftConfig.from_dict({**common, **extra}) for name, extra in criteria.items()}
        with_column = {**batch, REFERENCE_COLUMN: torch.rand(gross, dtype=torch.float64)}
        seconds = {name: timed(lambda c=cfg: select(adapter, c, with_column, 0, 0, args.micro, device=device),
                               args.reps, device) for name, cfg in configs.items()}
        flops = FlopsModel.for_masked_lm(model, args.seq_len, args.exit_layer, 0.15, sparse_head=True)
        select_per_token = {name: charge_criterion(flops, cfg, args.seq_len, 0.15).select_per_token
                            for name, cfg in configs.items()}
    kept = {k: v[: args.micro].to(device) for k, v in batch.items()}

    def train():
        model.zero_grad(set_to_none=True)
        model(**kept).loss.backward()

    model.train()
    seconds["train forward + backward (kept rows)"] = timed(train, args.reps, device)
    ref_layers = detect_adapter(reference).num_layers
    gross_tokens, train_tokens = gross * args.seq_len, args.micro * args.seq_len
    model_flops = {name: per_token * gross_tokens for name, per_token in select_per_token.items()}
    model_flops["train forward + backward (kept rows)"] = flops.train_per_token * train_tokens
    train_s, train_f = seconds["train forward + backward (kept rows)"], model_flops["train forward + backward (kept rows)"]
    rows = []
    for name, s in seconds.items():
        f = model_flops[name]
        rows.append({"pass": name, "seconds": s, "share_measured": s / train_s, "gflops_model": f / 1e9,
                     "share_model": f / train_f, "cost_over_model": (s / train_s) / (f / train_f)})
    about = {"device": str(device), "torch": torch.__version__, "model": os.path.basename(args.model),
             "reference": os.path.basename(args.reference), "reference_layers": ref_layers, "seq_len": args.seq_len,
             "gross": gross, "micro": args.micro, "exit_layer": args.exit_layer, "reps": args.reps,
             "threads": torch.get_num_threads()}
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, model "
          f"{about['model']}, reference {about['reference']} ({ref_layers} layers), seq {args.seq_len}, gross "
          f"{gross} -> micro {args.micro}, exit {args.exit_layer}, median of {args.reps}\n")
    print("| pass | seconds | / training | model GFLOPs | / training (FLOPs model) | cost / model |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['pass']} | {r['seconds']:.4f} | {r['share_measured']:.3f} | {r['gflops_model']:.3f} | "
              f"{r['share_model']:.3f} | {r['cost_over_model']:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"setup": about, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
