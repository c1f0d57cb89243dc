"""Run as one process: ``sift_ds.hf.SiftTrainer`` on a tiny BERT for 4 steps (selection from step 1,
an evaluation at step 4) reporting to TensorBoard, wandb and Comet, offline as the environment says
(tests/test_tracking.py sets it). Writes Trainer's log history to <out>/log_history.json; the
reporters' own files are what the test reads."""
import argparse
import json
import os
import sys

import torch
from torch.utils.data import Dataset
from transformers import TrainingArguments, default_data_collator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from sift_ds.hf import SiftTrainer  # noqa: E402
from tiny import mlm_batch, tiny_bert  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
args = p.parse_args()


class Rows(Dataset):
    def __init__(self, n, seed):
        self.rows = mlm_batch(n, seed=seed)

    def __len__(self):
        return len(self.rows["input_ids"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.rows.items()}


training_args = TrainingArguments(
    output_dir=os.path.join(args.out, "run"), per_device_train_batch_size=4, max_steps=4, warmup_steps=3,
    learning_rate=2e-3, logging_steps=1, eval_strategy="steps", eval_steps=4, per_device_eval_batch_size=8,
    save_strategy="no", report_to=["tensorboard", "wandb", "comet_ml"], run_name="sift-report-to", seed=7,
    disable_tqdm=True, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
trainer = SiftTrainer(model=tiny_bert(layers=3, dropout=0.0, seed=3), args=training_args,
                      train_dataset=Rows(64, seed=5), eval_dataset=Rows(16, seed=6), data_collator=default_data_collator,
                      sift={"criterion": "entropy", "exit_layer": 1, "keep_ratio": 0.5, "kernel": "torch",
                            "selection_start_step": 1})
trainer.train()
with open(os.path.join(args.out, "log_history.json"), "w") as f:
    json.dump(trainer.state.log_history, f, allow_nan=True)
