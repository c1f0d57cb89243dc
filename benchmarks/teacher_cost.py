#!/usr/bin/env python
"""The cost of asynchronous convergence's two teachers, frozen copy against cached logits.

    python benchmarks/teacher_cost.py --layers 2 --hidden 128 --seq_len 64 --batch 16 --examples 1024

A BERT encoder with a sequence head (``--classes`` classes) and a token head (2 classes), one task of
each converged: per training step, the forward + backward + AdamW step of the student alone, with the
frozen copy's forward (teacher "frozen"), and with the cache lookup (teacher "cached"); median of
--reps after a warm-up, the three interleaved (one step of each in turn), on --threads threads. Once per convergence: the time to build the frozen copy and to run it over the
``--examples`` training examples (the cache). Memory: the frozen copy's weights (each distinct best
step keeps one on the training device, and its CPU snapshot, which a checkpoint holds) against the cache (examples x classes float32,
a token task examples x seq_len x classes). Prints a Markdown table; ``--json`` writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from transformers import BertConfig, BertModel

from sift_ds.async_convergence import AsyncConvergence
from sift_ds.async_convergence.teachers import cpu_weights


class Heads(nn.Module):
    def __init__(self, args):
        super().__init__()
        config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                            num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                            max_position_embeddings=args.seq_len)
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.seq, self.tok = nn.Linear(args.hidden, args.classes), nn.Linear(args.hidden, 2)

    def forward(self, input_ids):
        h = self.encoder(input_ids=input_ids).last_hidden_state
        return {"seq": self.seq(h[:, 0]), "tok": self.tok(h)}


def logits_of(module, inputs):
    return module(inputs["input_ids"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("layers", 2), ("hidden", 128), ("seq_len", 64), ("batch", 16), ("examples", 1024),
                          ("classes", 16), ("vocab", 8192), ("reps", 10), ("threads", 1)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = torch.randint(5, args.vocab, (args.examples, args.seq_len))

    def copy_model(weights):
        clone = Heads(args)
        clone.load_state_dict(weights)
        return clone

    def batches():
        for start in range(0, args.examples, args.batch):
            yield {"input_ids": data[start:start + args.batch]}, torch.arange(start, min(start + args.batch, args.examples))

    index = torch.arange(args.batch)
    inputs = {"input_ids": data[index]}
    labels = {"seq": torch.randint(0, args.classes, (args.batch,)), "tok": torch.randint(0, 2, (args.batch, args.seq_len))}
    rows, steps = {}, {}
    for teacher in ("none", "frozen", "cached"):
        torch.manual_seed(0)
        model = Heads(args)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        tasks = {"seq": {"patience": 1}, "tok": {"patience": 1}}
        control = AsyncConvergence({"teacher": "frozen" if teacher == "none" else teacher, "tasks": tasks},
                                   logits_of, copy_model, batches)
        built = 0.0
        if teacher != "none":  # both tasks improve at step 0 and converge at step 1
            control.observe(0, {"seq": {"accuracy": 1.0}, "tok": {"accuracy": 1.0}}, lambda: cpu_weights(model))
            start = time.perf_counter()
            control.observe(1, {"seq": {"accuracy": 0.0}, "tok": {"accuracy": 0.0}}, lambda: cpu_weights(model))
            if teacher == "frozen":  # the copy is built at its first use
                control.teacher_logits("seq", inputs, torch.zeros(()))
            built = time.perf_counter() - start

        def step(model=model, optimizer=optimizer, control=control):
            optimizer.zero_grad()
            batch = dict(inputs)  # a new batch each step, as a loader gives (the teacher forward is per batch)
            total, _ = control.loss(2, logits_of(model, batch), labels, batch, index)
            total.backward()
            optimizer.step()

        step()  # warm-up
        steps[teacher] = step
        weights = sum(t.numel() * t.element_size() for t in control.snapshots.values() for t in t.values())
        module = sum(p.numel() * p.element_size() for m in control.frozen.modules.values() for p in m.parameters())
        cache = sum(t.numel() * t.element_size() for t in control.caches.values())
        rows[teacher] = {"step_s": [], "build_s": built, "snapshot_mb": weights / 2**20, "module_mb": module / 2**20,
                         "cache_mb": cache / 2**20}
    for _ in range(args.reps):  # interleaved, so that a busy spell on the machine hits each teacher alike
        for teacher, step in steps.items():
            start = time.perf_counter()
            step()
            rows[teacher]["step_s"].append(time.perf_counter() - start)
    for r in rows.values():
        r["step_s"] = statistics.median(r["step_s"])
    base = rows["none"]["step_s"]
    print("| teacher | step (s) | vs none | once at convergence (s) | CPU snapshot (MB) | teacher module (MB) "
          "| cache (MB) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['step_s']:.4f} | {r['step_s'] / base:.2f}x | {r['build_s']:.2f} | {r['snapshot_mb']:.1f} "
              f"| {r['module_mb']:.1f} | {r['cache_mb']:.1f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rows": rows, "device": "cpu"}, f, indent=1)


if __name__ == "__main__":
    main()
