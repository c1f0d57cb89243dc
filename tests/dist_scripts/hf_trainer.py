"""Run under `deepspeed --num_gpus 2` (CPU, gloo): ``sift_ds.hf.SiftTrainer`` on a tiny BERT, without
DeepSpeed (``--zero -1``: Trainer's own DDP, bf16 autocast) or with a ZeRO stage given as
``TrainingArguments.deepspeed`` (its "sift" section read, and removed before DeepSpeed sees it).
Writes what tests/test_hf_trainer.py asserts to <out>/rank<r>.json.

Checked with collectives across the real ranks, against references independent of sift_ds:
* each selection keeps exactly the global top-k of float64 early-exit scores of a direct HF forward
  (``output_hidden_states``) on every rank's gross batch, and the rows a rank trains are those rows;
* ``num_items_in_batch`` counts the labelled tokens of the kept rows of all ranks;
* each selection's scores and kept rows are recorded, for the test's own average of a logging window;
* a run resumed from the step-3 checkpoint selects and trains what the uninterrupted run did.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from transformers import TrainingArguments, default_data_collator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from sift_ds.hf import SiftTrainer  # noqa: E402
from tiny import hf_reference_scores, mlm_batch, tiny_bert  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
p.add_argument("--zero", type=int, default=-1, help="-1: no DeepSpeed")
p.add_argument("--out", required=True)
args = p.parse_args()

MICRO, GAS, STEPS, SAVE_AT = 4, 2, 6, 3
SIFT = {"criterion": "loss", "exit_layer": 1, "keep_ratio": 0.5, "scope": "global", "kernel": "torch",
        "selection_start_step": 1, "start_after_lr_peak": True}  # Trainer's schedule here has no warm-up


class Rows(Dataset):
    def __init__(self, n):
        self.rows = mlm_batch(n, seed=5)

    def __len__(self):
        return len(self.rows["input_ids"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.rows.items()}


def gather(obj):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class CheckedTrainer(SiftTrainer):
    """Records each selection next to the independent reference computed at the same parameters."""

    records = []

    def select(self, batch, micro_step):
        sel = super().select(batch, micro_step)
        rec = {"step": self.state.global_step, "warmup": sel.warmup, "rows": int(sel.batch["input_ids"].shape[0]),
               "indices": sel.indices.tolist()}
        gross, rank = batch["input_ids"].shape[0], dist.get_rank()  # this rank's rows kept, from the indices
        mine = {i - rank * gross for i in sel.indices.tolist() if rank * gross <= i < (rank + 1) * gross}
        rec.update(scores=sel.scores.tolist(), kept=[i in mine for i in range(gross)], by_score=sel.by_score,
                   keep_ratio=sel.keep_ratio)
        if not sel.warmup:
            ref = hf_reference_scores(self.model, {k: v.to(self.args.device) for k, v in batch.items()}, 1, "loss")
            everyone = gather((ref.tolist(), batch["input_ids"].tolist()))
            scores = [s for e in everyone for s in e[0]]
            key = [(s if math.isfinite(s) else -math.inf, -i) for i, s in enumerate(scores)]
            topk = sorted(sorted(range(len(scores)), key=lambda i: key[i], reverse=True)[: MICRO * len(everyone)])
            all_ids = [row for e in everyone for row in e[1]]
            finite = torch.isfinite(ref)
            rec.update(
                is_topk=sel.indices.tolist() == topk,
                score_err=float((sel.scores.double().cpu()[finite] - ref.cpu()[finite]).abs().max()),
                rows_match=sel.batch["input_ids"].tolist() == [all_ids[i] for i in sel.trained.tolist()],
                trained_union_is_topk=sorted(i for e in gather(sel.trained.tolist()) for i in e) == topk)
        self.records.append(rec)
        return sel

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        kept, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        labelled = sum(int((b["labels"] != -100).sum()) for b in kept)
        self.records[-1]["num_items"] = float(num_items) if num_items is not None else None
        self.records[-1]["labelled_all_ranks"] = sum(gather(labelled))
        return kept, num_items


def training_args(out):
    ds = None
    if args.zero >= 0:
        ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
              "train_batch_size": "auto", "gradient_clipping": "auto",
              "zero_optimization": {"stage": args.zero}, "sift": SIFT}
    return TrainingArguments(
        output_dir=out, per_device_train_batch_size=MICRO, gradient_accumulation_steps=GAS, max_steps=STEPS,
        learning_rate=2e-3, logging_steps=2, save_strategy="steps", save_steps=SAVE_AT, report_to=["tensorboard"],
        seed=7, deepspeed=ds, bf16=args.zero < 0, disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), ddp_backend="gloo", save_only_model=False)


def run(out, resume=None):
    CheckedTrainer.records = []
    trainer = CheckedTrainer(model=tiny_bert(layers=3, dropout=0.0, seed=3), args=training_args(out),
                             train_dataset=Rows(192), data_collator=default_data_collator,
                             sift=None if args.zero >= 0 else SIFT)
    result = trainer.train(resume_from_checkpoint=resume)
    return trainer, result, list(CheckedTrainer.records)


trainer, result, records = run(os.path.join(args.out, "run"))
res = {"records": records, "log_history": trainer.state.log_history, "gross": trainer.gross_batch_size,
       "train_loss": result.training_loss, "ds_has_sift": None}
if trainer.is_deepspeed_enabled:
    res["ds_has_sift"] = "sift" in trainer.accelerator.state.deepspeed_plugin.deepspeed_config
again, _, resumed = run(os.path.join(args.out, "run"), resume=os.path.join(args.out, "run", f"checkpoint-{SAVE_AT}"))
res["resumed"] = resumed
res["resumed_log_history"] = again.state.log_history
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump(res, f, allow_nan=True)
dist.barrier()
