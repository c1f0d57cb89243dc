"""Compiled against eager SIFT steps on the CPU: one in-process DeepSpeed engine (one rank, gloo,
ZeRO-1, fp32) per mode, the same initial weights and gross batches, eager first.

    taskset -c 1 env OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu .venv/bin/python benchmarks/compile_step.py \\
        --steps 30 --json runs/compile_step.json

* Shape: the depth-12 study's model (ds_configs/models/bert_L12_H128.json), vocab 8,192, micro-batch
  16 of 128 tokens, entropy-SIFT at exit layer 1 keeping 0.5 (gross 32), the masked-positions-only
  head (padded when compiled), 15% masked, no dropout.
* ``eager``: the job's default path. ``compiled``: ``sift_ds.compiling.compile_engine`` with
  ``--backend`` (inductor), as ``--compile true`` does it. Each mode's first ``--warm_up`` steps
  (the compilation) are timed apart, one mode after the other; then the two modes take turns, one
  step each on the same gross batch, so that a machine shared with other work slows both alike.
  ``step_s``: the median step (host clock around ``train_step``); ``compiled_over_eager_step``: the
  median of the per-pair ratios.
* ``graphs_after_warm_up`` / ``graph_breaks``: ``torch._dynamo`` counters over the timed steps (0, 0
  when the shapes stay static).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
from torch._dynamo.utils import counters

from sift_ds.ports import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "ds_configs", "models", "bert_L12_H128.json")
VOCAB, MICRO, SEQ, SHARE = 8192, 16, 128, 0.15


def batches(count: int, rows: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(5, VOCAB, (rows, SEQ), generator=g)
        labels = torch.where(torch.rand(rows, SEQ, generator=g) < SHARE, ids, torch.full_like(ids, -100))
        out.append({"input_ids": torch.where(labels != -100, torch.full_like(ids, 4), ids),
                    "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids), "labels": labels})
    return out


def engine(compiled: bool, backend: str):
    import sift_ds
    from sift_ds.compiling import compile_engine
    from sift_ds.pretrain.models import build_model, read_config

    config = read_config(CONFIG)
    config.vocab_size, config.hidden_dropout_prob, config.attention_probs_dropout_prob = VOCAB, 0.0, 0.0
    torch.manual_seed(0)
    model = build_model(config, sparse_head=True, masked_share=SHARE if compiled else None)
    cfg = {"train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": 1,
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01, "torch_adam": True}},
           "zero_optimization": {"stage": 1}, "steps_per_print": 10**9,
           "sift": {"criterion": "entropy", "exit_layer": 1, "keep_ratio": 0.5, "kernel": "torch",
                    "selection_start_step": 0, "start_after_lr_peak": True}}
    sift_engine = sift_ds.initialize(model=model, config=cfg)[0]
    return compile_engine(sift_engine, backend) if compiled else sift_engine


def timed_step(arm, batch):
    t = time.perf_counter()
    loss = arm.train_step(batch).item()
    return time.perf_counter() - t, loss


def measure(arms: dict, data, warm_up: int) -> dict:
    """Warm each arm up in turn, then step them in turns on the same batches."""
    out = {mode: {"warm_up_s": round(sum(timed_step(arm, b)[0] for b in data[:warm_up]), 2), "steps": [],
                  "losses": []} for mode, arm in arms.items()}
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    for batch in data[warm_up:]:
        for mode, arm in arms.items():
            seconds, loss = timed_step(arm, batch)
            out[mode]["steps"].append(seconds)
            out[mode]["losses"].append(loss)
    for rec in out.values():
        rec["step_s"] = round(statistics.median(rec["steps"]), 4)
    out.update(graphs_after_warm_up=counters["stats"]["unique_graphs"] - graphs,
               graph_breaks=sum(counters["graph_break"].values()) - breaks)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per mode, after the warm-up")
    p.add_argument("--warm_up", type=int, default=3, help="steps per mode timed apart (the compilation)")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--json", help="write the result here too")
    args = p.parse_args(argv)
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    data = batches(args.warm_up + args.steps, 2 * MICRO)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "shape": f"L12-H128, vocab {VOCAB}, micro-batch {MICRO} x {SEQ} tokens, gross {2 * MICRO}, entropy exit 1",
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "backend": args.backend, "steps": args.steps}
    result.update(measure({mode: engine(mode == "compiled", args.backend) for mode in ("eager", "compiled")},
                          data, args.warm_up))
    eager, compiled = result["eager"], result["compiled"]
    result["max_loss_difference"] = max(abs(a - b) for a, b in zip(eager.pop("losses"), compiled.pop("losses")))
    result["compiled_over_eager_step"] = round(statistics.median(
        c / e for c, e in zip(compiled.pop("steps"), eager.pop("steps"))), 3)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
