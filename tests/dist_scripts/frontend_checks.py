"""Run under torchrun with one rank (CPU, gloo), with tests/ and tests/dist_scripts/ on PYTHONPATH:
the same checks through one front-end (--frontend deepspeed | hf | megatron), on a 3-layer model of
that front-end (a tiny HF BERT; a megatron-core BertModel). Writes what tests/test_frontends.py
asserts to <out>/<frontend>.json:

* ``exit_layer_error``: the error of a config whose exit_layer (5) exceeds the model's depth (3), raised
  where the front-end starts (``sift_ds.initialize``; ``SiftTrainer(...)``; the first training
  micro-step of the wrapped ``forward_step``);
* ``probe``: the fidelity probe at exit layer 1 (the loss criterion) and, with the entropy criterion, at
  the full depth; ``full_depth_rows``: each row's float64 entropy and loss from the front-end's own model
  forward (its logits, not the early-exit path), from which the test computes that probe independently;
* ``kept``: rows kept of a full gross batch (8 rows, keep_ratio 0.25: micro-batch 2) and of a short one
  (5 rows), the same config in each front-end.
"""
import argparse
import json
import os

from sift_ds import SiftConfig

p = argparse.ArgumentParser()
p.add_argument("--frontend", choices=("deepspeed", "hf", "megatron"), required=True)
p.add_argument("--out", required=True)
args = p.parse_args()

LAYERS, BAD_EXIT, MICRO, KEEP_RATIO, SHORT = 3, 5, 2, 0.25, 5
GROSS = round(MICRO / KEEP_RATIO)
SIFT = {"exit_layer": 1, "keep_ratio": KEEP_RATIO, "kernel": "torch", "criterion": "loss", "selection_start_step": 0,
        "start_after_lr_peak": True}  # no scheduler: a constant learning rate
FULL_DEPTH = {**SIFT, "exit_layer": LAYERS, "criterion": "entropy"}


def rows_of(logits, labels, labelled):
    """{criterion: per-row float64 score over the labelled positions} of the model's own logits."""
    from tiny import f64_row_scores
    return {c: f64_row_scores(logits, labels, labelled, c).tolist() for c in ("entropy", "loss")}


def hf_rows(model, batch):
    import torch
    model.eval()
    with torch.no_grad():
        logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    return rows_of(logits, batch["labels"], batch["labels"] != -100)


def error_of(call):
    try:
        call()
    except ValueError as err:
        return str(err)
    return None


def take(batch, rows):
    return {k: v[:rows] for k, v in batch.items()}


# ---------------------------------------------------------------- the DeepSpeed engine
def deepspeed_frontend():
    import sift_ds
    from tiny import ds_config, mlm_batch, tiny_bert

    def engine(sift):
        cfg = ds_config(micro=MICRO, **sift)
        return sift_ds.initialize(model=tiny_bert(layers=LAYERS), config=cfg)[0]

    batch = mlm_batch(GROSS, seed=3)
    exact = engine(FULL_DEPTH)
    run = engine(SIFT)
    return {"exit_layer_error": error_of(lambda: engine({**SIFT, "exit_layer": BAD_EXIT})),
            "probe": run.probe(batch), "probe_full_depth": exact.probe(batch),
            "full_depth_rows": hf_rows(exact.module, batch),
            "kept": [len(run.select(take(batch, rows)).indices) for rows in (GROSS, SHORT)]}


# ---------------------------------------------------------------- the HF Trainer
def hf_frontend(out):
    from transformers import TrainingArguments

    from sift_ds.hf import SiftTrainer
    from tiny import mlm_batch, tiny_bert

    def trainer(sift):
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=MICRO, report_to=[], use_cpu=True)
        return SiftTrainer(model=tiny_bert(layers=LAYERS), args=targs, sift=sift)

    batch = mlm_batch(GROSS, seed=3)
    exact, run = trainer(FULL_DEPTH), trainer(SIFT)
    return {"exit_layer_error": error_of(lambda: trainer({**SIFT, "exit_layer": BAD_EXIT})),
            "probe": run.sift_probe(batch), "probe_full_depth": exact.sift_probe(batch),
            "full_depth_rows": hf_rows(exact.model, batch),
            "kept": [len(run.select(take(batch, rows), micro_step=0).indices) for rows in (GROSS, SHORT)]}


# ---------------------------------------------------------------- the Megatron drop-in
def megatron_frontend():
    import megatron_common as mc
    import torch
    from megatron.core import num_microbatches_calculator as nmc

    from sift_ds.megatron import Sift

    mc.init(1)
    nmc.init_num_microbatches_calculator(0, None, MICRO, MICRO, 1, False)
    model = mc.build_bert(layers=LAYERS)
    batch = mc.collate(mc.samples(GROSS, seed=3))

    def bad_start():
        sift = Sift(SiftConfig(**{**SIFT, "exit_layer": BAD_EXIT}), iteration=lambda: 0)
        model.train()
        item = {k: v.reshape(MICRO, GROSS // MICRO, *v.shape[1:]) for k, v in batch.items()}  # the gross dataset's
        sift.forward_step(mc.forward_step)(iter([item]), model)

    run, exact = Sift(SiftConfig(**SIFT), iteration=lambda: 0), Sift(SiftConfig(**FULL_DEPTH), iteration=lambda: 0)
    probes = {"probe": run.probe(model, batch), "probe_full_depth": exact.probe(model, batch)}
    model.eval()
    with torch.no_grad():
        logits, _ = model(batch["text"], batch["padding_mask"], tokentype_ids=batch["types"])
    return {"exit_layer_error": error_of(bad_start), **probes,
            "full_depth_rows": rows_of(logits, batch["labels"], batch["loss_mask"] == 1),
            "kept": [len(run.select(model, take(batch, rows), 0, 0)[0]["text"]) for rows in (GROSS, SHORT)]}


if args.frontend == "deepspeed":
    result = deepspeed_frontend()
elif args.frontend == "hf":
    result = hf_frontend(os.path.join(args.out, "hf_run"))
else:
    result = megatron_frontend()
with open(os.path.join(args.out, f"{args.frontend}.json"), "w") as f:
    json.dump(result, f)
