"""A tiny multi-task model and data for the AsyncConvergenceTrainer tests: one BERT encoder with three
heads ("first": the first token mod 3, "parity": the token sum's parity, "tag": each token's parity),
and three Trainer runs on it: uninterrupted, stopped at a step, and resumed from that step's checkpoint."""
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import BertConfig, BertModel, TrainerCallback, TrainingArguments, default_data_collator

from sift_ds.async_convergence.hf import AsyncConvergenceTrainer

STEPS, EVERY = 12, 3
# "first" converges at the second evaluation by script: with min_delta 1e6 only the first evaluation
# improves, so with patience 1 it converges at step 2 * EVERY, its teacher being step EVERY's model.
SCRIPTED = {"metric": "loss", "mode": "max", "min_delta": 1e6, "patience": 1, "temperature": 2.0, "kd_weight": 0.5,
            "blend_steps": 2}
LOGGED = ("loss", "grad_norm", "learning_rate", "eval_loss")


class ThreeHeads(nn.Module):
    task_names = ("first", "parity", "tag")

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.1)
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.first, self.parity, self.tag = nn.Linear(16, 3), nn.Linear(16, 2), nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask=None):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return {"logits": {"first": self.first(h[:, 0]), "parity": self.parity(h[:, 0]), "tag": self.tag(h)}}


class Rows(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 32, (n, 8), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "first_labels": ids[0] % 3,
                "parity_labels": ids.sum() % 2, "tag_labels": ids % 2, "example_index": torch.tensor(i)}


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def trainer(output_dir, teacher, stop_at=None, tasks=None, save_every=EVERY, balancing=None, watch=True):
    """``watch`` False: no task watched (``async_convergence`` left out); ``balancing``: the loss balancing."""
    args = TrainingArguments(output_dir=str(output_dir), max_steps=STEPS, per_device_train_batch_size=4,
                             per_device_eval_batch_size=8, learning_rate=5e-3, eval_strategy="steps", eval_steps=EVERY,
                             save_steps=save_every, logging_steps=EVERY, report_to=[], seed=0, use_cpu=True,
                             disable_tqdm=True, dataloader_num_workers=0, save_only_model=False)
    return AsyncConvergenceTrainer(model=ThreeHeads(), args=args, train_dataset=Rows(40, 1), eval_dataset=Rows(16, 2),
                                   data_collator=default_data_collator,
                                   callbacks=[StopAt(stop_at)] if stop_at else [],
                                   async_convergence={"teacher": teacher,
                                                      "tasks": tasks or {"first": SCRIPTED, "parity": {"patience": 50}}}
                                   if watch else None, balancing=balancing)


def logged(history, after=0):
    """The training and evaluation records after step ``after``: every loss, metric and task state."""
    keep = lambda key: key in LOGGED or key.startswith("eval_") and not key.endswith(("runtime", "per_second")) \
        or key.endswith(("_loss", "_distill_share", "_converged_step", "_weight"))
    return [{k: v for k, v in r.items() if keep(k)} | {"step": r["step"]} for r in history
            if r["step"] > after and "train_runtime" not in r]


def three_runs(tmp, teacher, stop_at, **settings):
    """(uninterrupted, stopped + resumed) log records after ``stop_at``, and the uninterrupted run;
    ``settings``: more of ``trainer``'s arguments."""
    whole = trainer(tmp / "whole", teacher, save_every=stop_at, **settings)  # checkpoints at the stop step only
    whole.train()
    stopped = trainer(tmp / "resumed", teacher, stop_at=stop_at, save_every=stop_at, **settings)
    stopped.train()
    assert stopped.state.global_step == stop_at
    resumed = trainer(tmp / "resumed", teacher, save_every=stop_at, **settings)
    resumed.train(resume_from_checkpoint=str(tmp / "resumed" / f"checkpoint-{stop_at}"))
    return logged(whole.state.log_history, stop_at), logged(resumed.state.log_history, stop_at), whole
