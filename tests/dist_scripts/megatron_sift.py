"""Run under torchrun (CPU, gloo) with 2 ranks (--tp 2) or 4 ranks (--tp 2: TP=2 x DP=2): a real
megatron-core BertModel with sift_ds.megatron; writes what tests/test_megatron_dist.py asserts to
<out>/rank<r>.json. The references are independent of sift_ds's scoring code:

* k = L: the model's own forward with lm_labels (vocab_parallel_cross_entropy) per token;
* k < L: the model's own forward (hidden states of layer k caught by a hook), then the final
  layernorm, the MLM head and the *unsharded* (all-gathered) output weight in float64;
* selection: top-k recomputed from the all-gathered scores; rows compared to the gross batches.
"""
import argparse
import copy
import json
import math
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import megatron_common as mc  # noqa: E402
from megatron.core import parallel_state as ps  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from sift_ds import SiftConfig  # noqa: E402
from sift_ds.megatron import GrossDataset, MCoreBertAdapter, Sift  # noqa: E402
from sift_ds.criteria import early_exit_token_scores as token_scores  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--tp", type=int, default=2)
p.add_argument("--out", required=True)
p.add_argument("--pp_check", action="store_true")
p.add_argument("--sp_check", action="store_true")
p.add_argument("--gpt_check", action="store_true")
p.add_argument("--sparse_check", action="store_true")
p.add_argument("--train_steps", type=int, default=10)
p.add_argument("--state_check", action="store_true", help="the freq_loss resume and loss-dict telemetry checks")
args = p.parse_args()

mc.init(args.tp)
RANK, WORLD = dist.get_rank(), dist.get_world_size()
TP_GROUP, DP_GROUP = ps.get_tensor_model_parallel_group(), ps.get_data_parallel_group()
DP_RANK, DP_WORLD = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
MICRO, FACTOR = 4, 2
res = {"tp": ps.get_tensor_model_parallel_world_size(), "dp": DP_WORLD}


gather, max_err = mc.gather, mc.max_err


def reference_scores(model, batch, k, criterion):
    caught = {}
    hook = model.encoder.layers[k - 1].register_forward_hook(lambda m, i, o: caught.__setitem__("h", o[0].detach()))
    model.eval()
    with torch.no_grad():
        model(batch["text"], batch["padding_mask"], tokentype_ids=batch["types"])
    hook.remove()
    weight, bias = (t.double() for t in mc.full_head(model))
    ln, head = copy.deepcopy(model.encoder.final_layernorm).double(), copy.deepcopy(model.lm_head).double()
    with torch.no_grad():
        logp = torch.log_softmax(head(ln(caught["h"].double().transpose(0, 1))) @ weight.T + bias, dim=-1)
    if criterion == "loss":
        tok = -logp.gather(-1, batch["labels"].clamp(min=0)[..., None]).squeeze(-1)
    else:
        tok = -(logp.exp() * logp).sum(-1)
    mask = batch["loss_mask"].bool()
    count = mask.sum(1)
    mean = (tok * mask).sum(1) / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, -math.inf))


model = mc.build_bert()
adapter = MCoreBertAdapter(model)
L = adapter.num_layers
batch = mc.collate(mc.samples(8, seed=100 + DP_RANK, empty_every=7))  # one TP group: one batch

# ---- k = L: per-token CE merged over the TP vocabulary == the model's own vocab-parallel loss
model.eval()
with torch.no_grad():
    own, _ = model(batch["text"], batch["padding_mask"], tokentype_ids=batch["types"], lm_labels=batch["labels"])
tok, _ = token_scores(adapter, batch, L, "loss", "torch")
res["full_loss_max_err"] = float((tok - own.reshape(-1)[batch["loss_mask"].reshape(-1) != 0]).abs().max())
res["full_loss_tokens"] = int(tok.numel())

# ---- k < L (and L): scores == float64 reference with the unsharded head; identical on TP ranks
res["ref"] = {}
for k in (1, 2, L):
    for criterion in ("loss", "entropy"):
        got = Sift(SiftConfig(exit_layer=k, criterion=criterion, kernel="torch")).scores(model, batch)
        err, same_inf = max_err(got, reference_scores(model, batch, k, criterion))
        tp_same = all(torch.equal(torch.tensor(s), got) for s in gather(got.tolist(), TP_GROUP))
        res["ref"][f"{criterion}/{k}"] = {"err": err, "same_inf": same_inf, "tp_identical": tp_same,
                                          "n_inf": int((~torch.isfinite(got)).sum())}

# ---- selection through the wrapped forward_step (TP rank 0 alone holds the iterator, as in Megatron)
base = mc.samples(MICRO * FACTOR * 3, seed=200 + DP_RANK, empty_every=5)
gross_ds = GrossDataset(base, FACTOR)


def loader_iter():
    if ps.get_tensor_model_parallel_rank() != 0:
        return None
    return iter(DataLoader(gross_ds, batch_size=MICRO, shuffle=False))


def gross_rows(first_item=0):
    items = [gross_ds[first_item + i] for i in range(MICRO)]
    return {k: torch.cat([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


res["select"] = {}
for scope in ("local", "global"):
    sift = Sift(SiftConfig(exit_layer=1, keep_ratio=1 / FACTOR, scope=scope, kernel="torch", selection_start_step=0),
                iteration=lambda: 3)
    wrapped = sift.forward_step(mc.forward_step)
    model.train()
    out, lf = wrapped(loader_iter(), model)
    loss, stats = lf(out)
    last, seen = sift.last, mc.SEEN[-1][1]
    gross = gross_rows()
    own_scores = sift.scores(model, gross)
    rec = {"kept_rows": int(seen["text"].shape[0]), "loss_finite": bool(torch.isfinite(loss)),
           "stat_keys": sorted(stats), "scores_match": bool(torch.equal(own_scores, last.scores))}
    signature = json.dumps([last.indices.tolist(), last.scores.tolist(), seen["text"].tolist()])
    rec["tp_identical"] = len(set(gather(signature, TP_GROUP))) == 1
    everyone = torch.cat([torch.tensor(s) for s in gather(last.scores.tolist(), DP_GROUP)])
    keep_total = MICRO * (DP_WORLD if scope == "global" else 1)
    pool = everyone if scope == "global" else last.scores
    key = torch.where(torch.isfinite(pool), pool.double(), torch.full_like(pool.double(), -math.inf))
    expected = torch.sort(torch.sort(key, descending=True, stable=True).indices[:keep_total]).values
    rec["is_topk"] = bool(torch.equal(last.indices, expected))
    rec["dp_identical"] = len(set(gather(repr(last.indices.tolist()), DP_GROUP))) == 1
    all_text = torch.cat([torch.tensor(t) for t in gather(gross["text"].tolist(), DP_GROUP)])
    if scope == "global":  # the DP ranks together train exactly the globally kept rows, each once
        kept_all = sorted(map(tuple, all_text[last.indices].tolist()))
        trained_all = sorted(tuple(row) for rows in gather(seen["text"].tolist(), DP_GROUP) for row in rows)
        rec["rows_match"] = kept_all == trained_all
    else:
        rec["rows_match"] = bool(torch.equal(seen["text"], gross["text"][last.indices]))
    rec["kept_fraction_pair"] = stats["sift/kept_fraction"].tolist()
    rec["kept_sum_over_dp"] = sum(g[0] for g in gather(rec["kept_fraction_pair"], DP_GROUP))
    rec["score_kept_ge_dropped"] = bool(
        (stats["sift/score_kept_mean"][0] / stats["sift/score_kept_mean"][1]).item()
        >= (stats["sift/score_dropped_mean"][0] / stats["sift/score_dropped_mean"][1].clamp(min=1)).item()
        or scope == "global")
    res["select"][scope] = rec

# ---- evaluation passes through: the script's forward_step gets Megatron's iterator itself
model.eval()
sift = Sift(SiftConfig(exit_layer=1, keep_ratio=0.5, kernel="torch", selection_start_step=0), iteration=lambda: 3)
it = iter([batch])
out, lf = sift.forward_step(mc.forward_step)(it, model)
res["eval_same_iterator"] = mc.SEEN[-1][0] is it
res["eval_rows"] = int(mc.SEEN[-1][1]["text"].shape[0])
res["eval_keys"] = sorted(lf(out)[1])

# ---- training on a repeated gross batch: warm-up 2 iterations, then global selection
torch.manual_seed(1234 + DP_RANK)  # the TP ranks of a group draw the same dropout (no CUDA RNG tracker)
step = {"i": 0}
sift = Sift(SiftConfig(exit_layer=1, keep_ratio=1 / FACTOR, scope="global", warmup_steps=2, kernel="torch"),
            iteration=lambda: step["i"])
wrapped = sift.forward_step(mc.forward_step)
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
model.train()
losses, warm = [], []
for i in range(args.train_steps):
    step["i"] = i
    opt.zero_grad()
    total = 0.0
    for micro in range(2):
        out, lf = wrapped(loader_iter(), model)
        loss, stats = lf(out)
        (loss / 2).backward()
        total += loss.item() / 2
        warm.append(bool(sift.last.warmup))
    for prm in model.parameters():
        if prm.grad is not None and DP_WORLD > 1:
            dist.all_reduce(prm.grad, group=DP_GROUP)
            prm.grad /= DP_WORLD
    opt.step()
    losses.append(total)
res["train_losses"] = losses
res["train_warmup"] = warm

# ---- sequence parallelism: hidden states [s/tp, b, h] between layers, gathered over s before the head
if args.sp_check:
    plain, sp = mc.build_bert(seed=5, dropout=0.0), mc.build_bert_sp(seed=5, dropout=0.0)
    rec = {"sequence_parallel": bool(sp.config.sequence_parallel),
           "same_weights": all(torch.equal(a, b) for a, b in zip(plain.parameters(), sp.parameters())), "ref": {}}
    sp.eval()
    with torch.no_grad():  # the layer-1 output of the SP model really is a sequence chunk
        sp_adapter = MCoreBertAdapter(sp)
        hidden, ctx = sp_adapter.embed(batch)
        rec["chunk_shape"] = list(sp_adapter.layer(0, hidden, ctx).shape)
    for k in range(1, mc.LAYERS + 1):
        for criterion in ("loss", "entropy"):
            got = Sift(SiftConfig(exit_layer=k, criterion=criterion, kernel="torch")).scores(sp, batch)
            err, same_inf = max_err(got, reference_scores(plain, batch, k, criterion))
            rec["ref"][f"{criterion}@{k}"] = {"err": err, "same_inf": same_inf}
    trained = {}
    for name, net in (("plain", plain), ("sp", sp)):  # global selection and the training forward
        sift = Sift(SiftConfig(exit_layer=1, keep_ratio=1 / FACTOR, scope="global", kernel="torch", selection_start_step=0),
                    iteration=lambda: 3)
        net.train()
        out, lf = sift.forward_step(mc.forward_step)(loader_iter(), net)
        loss, _ = lf(out)
        loss.backward()
        grad = net.encoder.layers[0].mlp.linear_fc1.weight.grad
        trained[name] = (sift.last.indices.tolist(), mc.SEEN[-1][1]["text"].tolist(), loss.item(), grad.clone())
    rec["same_selection"] = trained["plain"][:2] == trained["sp"][:2]
    rec["loss_err"] = abs(trained["plain"][2] - trained["sp"][2])
    rec["grad_err"] = (trained["plain"][3] - trained["sp"][3]).abs().max().item()
    res["sp"] = rec

# ---- the masked-positions-only MLM head against the dense model's own vocab-parallel loss (same weights)
if args.sparse_check:
    from sift_ds.megatron import apply_sparse_mlm_head
    from sift_ds.mlm_head import is_patched
    got = {}
    for name in ("dense", "patched", "wrapped"):
        net = mc.build_bert(seed=9, dropout=0.0)
        if name == "patched":
            apply_sparse_mlm_head(net)
        step = mc.forward_step
        if name == "wrapped":  # SIFT off: the wrapped forward_step still gives the sparse head
            step = Sift(SiftConfig(enabled=False, kernel="torch"), iteration=lambda: 0).forward_step(mc.forward_step)
        net.train()
        out, lf = step(iter([batch]), net)
        loss, _ = lf(out)
        loss.backward()
        net.eval()
        with torch.no_grad():
            evaluated = mc.forward_step(iter([batch]), net)[0][0]
        got[name] = (out[0].detach(), loss.item(), [q.grad.clone() for q in net.parameters()], evaluated,
                     is_patched(net))
    rec = {}
    mask = batch["loss_mask"] != 0
    for name in ("patched", "wrapped"):
        tokens, loss, grads, evaluated, patched = got[name]
        ref = got["dense"]
        rec[name] = {"patched": patched, "loss_err": abs(loss - ref[1]),
                     "token_err": float((tokens - ref[0])[mask].abs().max()),
                     "zero_elsewhere": bool((tokens[~mask] == 0).all()),
                     "grad_err": max(float((g - r).abs().max()) for g, r in zip(grads, ref[2])),
                     "eval_identical": bool(torch.equal(evaluated, ref[3])), "shape": list(tokens.shape)}
    rec["dense_patched"] = got["dense"][4]
    res["sparse"] = rec

# ---- freq_loss resumed from a checkpoint with sift.state_dict(); the loss-dict telemetry (megatron_state.py)
if args.state_check:
    from megatron_state import state_checks
    res["state"] = state_checks(DP_RANK)

# ---- megatron-core GPTModel (tests/dist_scripts/megatron_gpt.py): scores, references, selection
if args.gpt_check:
    from megatron_gpt import gpt_checks
    res["gpt"] = gpt_checks(DP_RANK)

# ---- pipeline parallelism is refused, with the reason
if args.pp_check:
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=WORLD)
    sift = Sift(SiftConfig(kernel="torch", selection_start_step=0), iteration=lambda: 0)
    errors = []
    for call in (lambda: sift.datasets_provider(lambda n: (base, None, None))([8, 0, 0]),
                 lambda: sift.forward_step(mc.forward_step)(None, torch.nn.Linear(1, 1).train())):
        try:
            call()
            errors.append(None)
        except ValueError as err:
            errors.append(str(err))
    res["pp_errors"] = errors

os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, f"rank{RANK}.json"), "w") as f:
    json.dump(res, f, indent=1)
dist.barrier()
dist.destroy_process_group()
