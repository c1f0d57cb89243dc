"""Run under `deepspeed --num_gpus 2` (CPU, gloo): train a tiny BERT with SIFT for each ZeRO stage,
scope and dtype given (recorded as zero<Z>/<dtype>/<scope>), and for each ``--also`` run (fp32, scope
global, its own ZeRO stage, criterion and steps) in the same launch, and write what the test asserts
to <out>/rank<r>.json.

Checked here, with collectives across the real ranks:
* every rank trains on exactly micro-batch rows, each micro-step;
* under scope "global" the kept indices are identical on every rank, equal the top-k of all ranks'
  gathered scores, and the rows a rank trains on are the kept rows ``Selection.trained`` names;
* the training loss and the full-batch eval loss fall;
* every window of ``engine.read_stats()`` (recorded with each rank's scores and kept rows per
  micro-step, for the test's own average over both ranks);
* under ZeRO-3, the early-exit scores equal a direct HF forward with gathered parameters, and the
  selection pass leaves DeepSpeed's module trace (its prefetch schedule) intact.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
import sift_ds  # noqa: E402
from tiny import ds_config, mlm_batch, tiny_bert  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
p.add_argument("--zero", required=True, help="the ZeRO stages, comma-separated")
p.add_argument("--dtypes", default="fp32,bf16")
p.add_argument("--scopes", default="local,global")
p.add_argument("--steps", type=int, default=24)
p.add_argument("--gas", type=int, default=2)
p.add_argument("--criterion", default="loss")
p.add_argument("--out", required=True)
p.add_argument("--vanilla_control", action="store_true",
               help="also run fp32/local once with SIFT disabled at ZeRO-3, as its prefetch baseline")
p.add_argument("--also", action="append", default=[], metavar="ZERO:CRITERION:STEPS",
               help="also run fp32/global at that ZeRO stage, with that criterion, for that many steps "
                    "(recorded as zero<ZERO>-<CRITERION>/fp32/global)")
args = p.parse_args()

MICRO = 4
WINDOW_STEPS = 2  # optimizer steps per telemetry window (engine.read_stats)


def all_gather_obj(obj):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def coordinator(engine):
    opt = engine.engine.optimizer
    return opt.parameter_offload.get_param_coordinator() if hasattr(opt, "parameter_offload") else None


def eval_loss(engine, pool):
    engine.module.eval()
    with torch.no_grad():
        loss = engine.engine(**{k: v.to(engine.device) for k, v in pool.items()}).loss.float().item()
    engine.module.train()
    return loss


def count_demand_fetches(coord, counter):
    """Numel of parameters that a module had to fetch on demand (neither available nor in flight
    from a prefetch) when it ran: with prefetching working this is small and stable."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    original = coord.fetch_sub_module

    def fetch(sub_module, forward):
        counter["numel"] += sum(p.ds_numel for p in sub_module.parameters(recurse=False)
                                if p.ds_status == ZeroParamStatus.NOT_AVAILABLE)
        return original(sub_module, forward)

    coord.fetch_sub_module = fetch


def run(dtype, scope, zero, enabled=True, criterion=args.criterion, steps=args.steps):
    torch.manual_seed(0)
    model = tiny_bert(layers=3, dropout=0.0)
    cfg = ds_config(micro=MICRO, gas=args.gas, stage=zero, dtype=dtype, scope=scope,
                    criterion=criterion, exit_layer=1, warmup_steps=2, enabled=enabled)
    cfg["zero_optimization"].update({"stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 20000})
    engine, _, _, _ = sift_ds.initialize(model=model, config=cfg)
    rank, world, gross = dist.get_rank(), dist.get_world_size(), engine.gross_batch_size
    pool = mlm_batch(64, seed=1000 + rank, empty_row=False)  # fixed data so the loss can fall

    invalidations, demand = {"n": 0}, {"numel": 0}
    coord = coordinator(engine)
    if coord is not None:
        count_demand_fetches(coord, demand)
        original = coord._invalidate_trace

        def counting():
            invalidations["n"] += 1
            original()

        coord._invalidate_trace = counting

    rec = {"losses": [], "rows": [], "global_agree": [], "global_is_topk": [], "rows_match": [], "warmup": [],
           "selections": [], "windows": []}
    inval_after_warm = None
    for step in range(steps * args.gas):
        g = torch.Generator().manual_seed(step * 97 + rank)
        pick = torch.randperm(64, generator=g)[:gross]
        batch = {k: v[pick] for k, v in pool.items()}
        sel = engine.select(batch)
        rec["rows"].append(int(sel.batch["input_ids"].shape[0]))
        rec["warmup"].append(sel.warmup)
        # this rank's scores and which of its gross rows were kept (from the indices), for the telemetry check
        offset = rank * gross if scope == "global" else 0  # global indices count every rank's rows
        mine = {i - offset for i in sel.indices.tolist() if 0 <= i - offset < gross}
        rec["selections"].append({"scores": sel.scores.tolist(), "kept": [i in mine for i in range(gross)],
                                  "by_score": sel.by_score, "keep_ratio": sel.keep_ratio})
        if scope == "global" and not sel.warmup:
            everyone = all_gather_obj((sel.indices.tolist(), sel.scores.tolist(), batch["input_ids"].tolist()))
            rec["global_agree"].append(all(e[0] == everyone[0][0] for e in everyone))
            scores = torch.tensor([s for e in everyone for s in e[1]], dtype=torch.float64)
            order = sorted(range(len(scores)), key=lambda i: (scores[i].item(), -i), reverse=True)
            rec["global_is_topk"].append(sorted(order[: MICRO * world]) == sel.indices.tolist())
            all_ids = torch.tensor([row for e in everyone for row in e[2]])
            mine = sel.trained.cpu()  # the global indices of the rows this rank trains (row_exchange plan)
            rec["rows_match"].append(torch.equal(all_ids[mine], sel.batch["input_ids"].cpu()))
        # the training step itself (select again inside train_step: deterministic, same rows)
        loss = engine.train_step(batch)
        rec["losses"].append(float(loss.float().item()))
        if (step + 1) % (WINDOW_STEPS * args.gas) == 0:  # a log window: its sift/* means over both ranks
            rec["windows"].append(engine.read_stats())
        if step == 2 * args.gas:
            inval_after_warm, demand_after_warm = invalidations["n"], demand["numel"]
    rec["stats"] = rec["windows"][-1]
    if coord is not None:
        rec["zero3_demand_fetch_numel_per_step"] = (demand["numel"] - demand_after_warm) / (steps - 3)
        rec["zero3_demand_fetch_numel_total"] = demand["numel"]  # > 0: the first step runs before the trace exists
    rec["zero3_trace_complete"] = coord.is_complete_trace() if coord is not None else None
    rec["zero3_invalidations_after_warmup"] = (
        invalidations["n"] - inval_after_warm if coord is not None else None
    )
    if not enabled:
        return rec

    # Scores against an independent HF forward (full parameters gathered under ZeRO-3).
    check = mlm_batch(gross, seed=77 + rank)
    sel = engine.select(check)
    from sift_ds.zero import full_parameters

    module = engine.module
    check = {k: v.to(engine.device) for k, v in check.items()}
    module.eval()
    with torch.no_grad(), full_parameters([module]):
        out = module.bert(input_ids=check["input_ids"], attention_mask=check["attention_mask"],
                          token_type_ids=check["token_type_ids"], output_hidden_states=True)
        logits = module.cls.predictions(out.hidden_states[1]).double()
    module.train()
    logp = torch.log_softmax(logits, -1)
    mask = check["labels"] != -100
    tok = -logp.gather(-1, check["labels"].clamp_min(0)[..., None]).squeeze(-1)
    if criterion == "entropy":
        tok = -(logp.exp() * logp).sum(-1)
    ref = torch.where(mask.any(1), (tok * mask).sum(1) / mask.sum(1).clamp_min(1),
                      torch.tensor(-math.inf, dtype=torch.float64, device=tok.device))
    finite = torch.isfinite(ref)
    rec["score_max_abs_err"] = float((sel.scores.double()[finite] - ref[finite]).abs().max())
    assert torch.equal(torch.isfinite(sel.scores), finite)
    rec["eval_loss_end"] = eval_loss(engine, pool)
    torch.manual_seed(0)
    rec["eval_loss_start"] = eval_loss_fresh(dtype)
    return rec


def eval_loss_fresh(dtype):
    """Eval loss of the untrained model on this rank's pool (plain torch, same init)."""
    torch.manual_seed(0)
    model = tiny_bert(layers=3, dropout=0.0).eval()
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    pool = mlm_batch(64, seed=1000 + dist.get_rank(), empty_row=False)
    with torch.no_grad():
        return model(**pool).loss.float().item()


results = {}
if args.vanilla_control:
    results["zero3/vanilla/local"] = run("fp32", "local", zero=3, enabled=False)
for zero in args.zero.split(","):
    for dtype in args.dtypes.split(","):
        for scope in args.scopes.split(","):
            results[f"zero{zero}/{dtype}/{scope}"] = run(dtype, scope, zero=int(zero))
for spec in args.also:
    zero, criterion, steps = spec.split(":")
    results[f"zero{zero}-{criterion}/fp32/global"] = run("fp32", "global", zero=int(zero), criterion=criterion,
                                                         steps=int(steps))
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump(results, f)
