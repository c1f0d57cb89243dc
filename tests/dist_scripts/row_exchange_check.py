"""Run under `deepspeed --num_gpus N` (CPU, gloo): ``SiftEngine.select`` with scope "global" on a tiny
BERT, around a stand-in for the DeepSpeed engine (select needs only the model, the step counters and
the process group), and write what tests/test_row_exchange.py asserts to <out>/rank<r>.json.

Per step, checked with collectives *outside* the counted window:
* the kept set (the union of the rows every rank trains) equals an independent float64 global top-k
  of all ranks' scores, and equals ``Selection.indices``;
* each rank trains exactly micro-batch rows, no row twice, and every tensor of each trained row
  equals that row of the owning rank's gross batch (``Selection.trained`` names them);
* the bytes each rank receives inside ``select`` (every torch.distributed call wrapped and counted)
  stay within its deficit x row bytes plus the all-gathered scores.
Steps use the real early-exit scores, and scores forced to put every top row on one rank (the
largest possible exchange), on the last rank, or to be balanced (nothing moves).
"""
import argparse
import functools
import json
import math
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
import sift_ds  # noqa: E402
from sift_ds import engine as engine_module  # noqa: E402
from sift_ds import selection as core_module  # noqa: E402
from sift_ds.adapters import BertAdapter  # noqa: E402
from sift_ds.row_exchange import row_bytes  # noqa: E402
from tiny import mlm_batch, tiny_bert  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
p.add_argument("--out", required=True)
p.add_argument("--micro", type=int, default=3)
args = p.parse_args()

dist.init_process_group("gloo")
RANK, WORLD, MICRO = dist.get_rank(), dist.get_world_size(), args.micro
RECEIVED = {"bytes": 0, "calls": []}
COUNTING = {"on": False}


def nbytes(t):
    return t.numel() * t.element_size()


def counted(name, fn):
    """Wrap a torch.distributed function: add what this rank receives from the others."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        if COUNTING["on"]:
            group = kw.get("group")
            world = dist.get_world_size(group)
            if name == "all_gather":
                got = (world - 1) * nbytes(a[1])
            elif name == "all_to_all_single":
                out_splits = a[2] if len(a) > 2 else kw.get("output_split_sizes")
                me = dist.get_rank(group)
                per_row = nbytes(a[0]) // max(a[0].shape[0], 1)
                got = per_row * sum(n for src, n in enumerate(out_splits) if src != me)
            else:  # any other collective: charge the whole tensor(s) it is given (pessimistic)
                got = sum(nbytes(x) for x in a if torch.is_tensor(x))
                got += sum(nbytes(x) for x in a if isinstance(x, list) for x in x if torch.is_tensor(x))
            RECEIVED["bytes"] += got
            RECEIVED["calls"].append(name)
        return fn(*a, **kw)

    return wrapper


for _name in ("all_gather", "all_to_all_single", "all_to_all", "all_reduce", "broadcast", "all_gather_object",
              "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor", "send", "recv", "isend", "irecv",
              "scatter", "gather", "broadcast_object_list"):
    setattr(dist, _name, counted(_name, getattr(dist, _name)))


def gather_obj(obj):
    out = [None] * WORLD
    dist.all_gather_object(out, obj)
    return out


model = tiny_bert(layers=2, dropout=0.0)
stub = SimpleNamespace(train_micro_batch_size_per_gpu=lambda: MICRO, device=torch.device("cpu"), global_steps=5,
                       micro_steps=0, gradient_accumulation_steps=lambda: 1, module=model)
cfg = sift_ds.SiftConfig(exit_layer=1, keep_ratio=0.5, scope="global", kernel="torch", selection_start_step=0)
sift = engine_module.SiftEngine(stub, BertAdapter(model), cfg)
GROSS = sift.gross_batch_size
real_scores = core_module.criteria.criterion_scores


def forced(kind, step):
    """Scores that put the kept rows where ``kind`` says (ties impossible: distinct values)."""
    g = torch.Generator().manual_seed(1000 * step + RANK)
    base = torch.rand(GROSS, generator=g)
    if kind == "one_rank":  # rank 0 (or the last) holds every top row it can: maximal traffic
        return base + (10.0 if RANK == 0 else 0.0)
    if kind == "last_rank":
        return base + (10.0 if RANK == WORLD - 1 else 0.0)
    if kind == "balanced":  # each rank's own top MICRO rows are the global top: nothing moves
        return base + 10.0 * (torch.arange(GROSS) < MICRO).float()
    raise ValueError(kind)


kinds = ["real", "real", "one_rank", "last_rank", "balanced", "real", "one_rank"]
records = []
for step, kind in enumerate(kinds):
    batch = mlm_batch(GROSS, seed=31 * step + RANK, empty_row=(step % 2 == 0))
    if kind == "real":
        core_module.criteria.criterion_scores = real_scores
    else:
        core_module.criteria.criterion_scores = lambda *a, _k=kind, _s=step, **kw: forced(_k, _s)
    RECEIVED.update(bytes=0, calls=[])
    COUNTING["on"] = True
    sel = sift.select(batch)
    COUNTING["on"] = False
    got_bytes, calls = RECEIVED["bytes"], list(RECEIVED["calls"])

    everyone = gather_obj({"scores": sel.scores.tolist(), "indices": sel.indices.tolist(),
                           "trained": sel.trained.tolist(), "batch": {k: v.tolist() for k, v in batch.items()},
                           "kept": {k: v.tolist() for k, v in sel.batch.items()}})
    scores = [s for e in everyone for s in e["scores"]]
    key = [(s if math.isfinite(s) else -math.inf, -i) for i, s in enumerate(scores)]
    topk = sorted(sorted(range(len(scores)), key=lambda i: key[i], reverse=True)[: MICRO * WORLD])
    trained_all = [i for e in everyone for i in e["trained"]]
    full = {k: [row for e in everyone for row in e["batch"][k]] for k in batch}
    rows_ok = all(sel.batch[k].tolist() == [full[k][i] for i in sel.trained.tolist()] for k in batch)
    own_kept = sum(1 for i in topk if RANK * GROSS <= i < (RANK + 1) * GROSS)
    deficit = max(MICRO - own_kept, 0)
    records.append({
        "kind": kind,
        "kept_rows": int(sel.batch["input_ids"].shape[0]),
        "indices_agree": all(e["indices"] == everyone[0]["indices"] for e in everyone),
        "indices_are_topk": sel.indices.tolist() == topk,
        "union_is_topk": sorted(trained_all) == topk,
        "no_duplicates": len(set(trained_all)) == len(trained_all),
        "rows_match": rows_ok,
        "trained_ascending": sel.trained.tolist() == sorted(sel.trained.tolist()),
        "received_bytes": got_bytes,
        "deficit": deficit,
        "row_bytes": row_bytes(batch),
        "score_bytes": (WORLD - 1) * GROSS * 4,
        "calls": calls,
    })

os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, f"rank{RANK}.json"), "w") as f:
    json.dump({"world": WORLD, "gross": GROSS, "micro": MICRO, "steps": records}, f)
dist.destroy_process_group()
