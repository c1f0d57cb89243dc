"""The megatron-core GPTModel checks, run inside megatron_sift.py's ranks (``--gpt_check``; they share
its process group and its TP / DP layout). Two models: an untied output layer with RoPE, and the
output layer tied to the word embeddings with learned positions. References independent of sift_ds's
scoring code:

* k = L: the model's own forward with ``labels`` (Megatron's vocab_parallel_cross_entropy) per token;
* k <= L: the model's own forward (layer k's output caught by a hook), then ``decoder.final_layernorm``
  and the *unsharded* (all-gathered) output weight in float64, against Megatron's already-shifted
  ``labels`` where ``loss_mask`` is set;
* selection through the wrapped forward_step (the adapter found from the model): top-k of the
  all-gathered scores, the DP ranks together train exactly the kept rows.
"""
import copy
import math

import megatron_common as mc
import torch
from megatron.core import parallel_state as ps
from torch.utils.data import DataLoader

from sift_ds import SiftConfig
from sift_ds.megatron import GrossDataset, MCoreGPTAdapter, Sift
from sift_ds.criteria import early_exit_token_scores as token_scores

MICRO, FACTOR = 4, 2


def model_forward(model, batch, **kwargs):
    return model(batch["tokens"], batch["position_ids"], batch["attention_mask"], **kwargs)


def reference_scores(model, batch, k, criterion):
    caught = {}
    hook = model.decoder.layers[k - 1].register_forward_hook(lambda m, i, o: caught.__setitem__("h", o[0].detach()))
    model.eval()
    with torch.no_grad():
        model_forward(model, batch)
    hook.remove()
    tied = model.share_embeddings_and_output_weights
    weight = mc.gather_shards(model.embedding.word_embeddings.weight if tied else model.output_layer.weight).double()
    norm = copy.deepcopy(model.decoder.final_layernorm).double()
    with torch.no_grad():
        logp = torch.log_softmax(norm(caught["h"].double().transpose(0, 1)) @ weight.T, dim=-1)
    if criterion == "loss":
        tok = -logp.gather(-1, batch["labels"][..., None]).squeeze(-1)
    else:
        tok = -(logp.exp() * logp).sum(-1)
    mask = batch["loss_mask"] != 0
    count = mask.sum(1)
    mean = (tok * mask).sum(1) / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, -math.inf))


def rows_of(items):
    return {k: torch.cat([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


def check_model(model, batch, gross_ds, tp_group, dp_group):
    rec = {"adapter": type(Sift(SiftConfig()).adapter(model)).__name__}
    adapter = MCoreGPTAdapter(model)
    L = adapter.num_layers
    model.eval()
    with torch.no_grad():
        own = model_forward(model, batch, labels=batch["labels"])
    tok, _ = token_scores(adapter, batch, L, "loss", "torch")
    rec["full_loss_max_err"] = float((tok - own.reshape(-1)[batch["loss_mask"].reshape(-1) != 0]).abs().max())
    rec["full_loss_tokens"] = int(tok.numel())
    rec["ref"] = {}
    for k in (1, L):
        for criterion in ("loss", "entropy"):
            got = Sift(SiftConfig(exit_layer=k, criterion=criterion, kernel="torch")).scores(model, batch)
            err, same_inf = mc.max_err(got, reference_scores(model, batch, k, criterion))
            same_tp = all(torch.equal(torch.tensor(s), got) for s in mc.gather(got.tolist(), tp_group))
            rec["ref"][f"{criterion}/{k}"] = {"err": err, "same_inf": same_inf, "tp_identical": same_tp,
                                              "n_inf": int((~torch.isfinite(got)).sum())}

    # selection through the wrapped forward_step, scope global (TP rank 0 alone holds the iterator)
    loader = iter(DataLoader(gross_ds, batch_size=MICRO)) if ps.get_tensor_model_parallel_rank() == 0 else None
    sift = Sift(SiftConfig(criterion="loss", exit_layer=1, keep_ratio=1 / FACTOR, scope="global", kernel="torch",
                           selection_start_step=0),
                iteration=lambda: 3)
    model.train()
    out, loss_func = sift.forward_step(mc.gpt_forward_step)(loader, model)
    loss, count, stats = loss_func(out)
    last, seen, gross = sift.last, mc.SEEN[-1][1], rows_of([gross_ds[i] for i in range(MICRO)])
    err, _ = mc.max_err(last.scores, reference_scores(model, gross, 1, "loss"))
    everyone = torch.cat([torch.tensor(s) for s in mc.gather(last.scores.tolist(), dp_group)])
    key = torch.where(torch.isfinite(everyone), everyone.double(), torch.full_like(everyone.double(), -math.inf))
    keep = MICRO * len(mc.gather(0, dp_group))
    expected = torch.sort(torch.sort(key, descending=True, stable=True).indices[:keep]).values
    all_text = torch.cat([torch.tensor(t) for t in mc.gather(gross["tokens"].tolist(), dp_group)])
    trained = sorted(tuple(r) for rows in mc.gather(seen["tokens"].tolist(), dp_group) for r in rows)
    rec["select"] = {"score_err": err, "is_topk": bool(torch.equal(last.indices, expected)),
                     "rows_match": sorted(map(tuple, all_text[last.indices].tolist())) == trained,
                     "kept_rows": int(seen["tokens"].shape[0]), "loss_finite": bool(torch.isfinite(loss)),
                     "count": int(count), "stat_keys": sorted(stats),
                     "tp_identical": len(set(mc.gather(repr((last.indices.tolist(), seen["tokens"].tolist())),
                                                       tp_group))) == 1}
    return rec


def gpt_checks(dp_rank):
    """{"untied_rope": ..., "tied_learned": ...}: each model's records (see check_model)."""
    tp_group, dp_group = ps.get_tensor_model_parallel_group(), ps.get_data_parallel_group()
    batch = mc.collate(mc.gpt_samples(8, seed=400 + dp_rank, empty_every=7))
    gross_ds = GrossDataset(mc.gpt_samples(MICRO * FACTOR, seed=500 + dp_rank, empty_every=5), FACTOR)
    return {name: check_model(mc.build_gpt(seed=7, tied=tied, rope=rope), batch, gross_ds, tp_group, dp_group)
            for name, tied, rope in (("untied_rope", False, True), ("tied_learned", True, False))}
