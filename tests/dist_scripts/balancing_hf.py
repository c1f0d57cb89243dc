"""Run under torchrun with 2 processes (CPU, gloo): one training step of AsyncConvergenceTrainer under
DDP per balancing method, rank r on the tiny model's training rows 4r..4r+3 with dropout off. Writes
to <out>/rank<r>.json each rank's gradients after the step (pcgrad: every parameter; uncertainty: the
log-variances and the word embeddings) and DWA's window means after the step's end
(tests/test_balancing_hf.py compares them with float64 references over both ranks' rows)."""
import argparse
import json
import os
import pathlib
import sys

import torch
import torch.distributed as dist
from transformers import TrainerControl, default_data_collator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from multitask_tiny import trainer  # noqa: E402
from sift_ds.async_convergence.balancing_hf import BalancingSteps  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
args = p.parse_args()
torch.set_num_threads(1)
out = pathlib.Path(args.out)
result = {}
for method in ("pcgrad", "uncertainty", "dwa"):
    run = trainer(out / method, "frozen", balancing={"method": method, "seed": 3} if method == "pcgrad"
                  else {"method": method}, watch=False)
    rank = run.args.process_index
    for m in run.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model = run.accelerator.prepare_model(run.model)
    batch = default_data_collator([run.train_dataset[i] for i in range(4 * rank, 4 * rank + 4)])
    run.current_gradient_accumulation_steps = 1
    run.training_step(model, batch)
    params = list(run.model.parameters())
    if method == "pcgrad":
        result[method] = [p.grad.reshape(-1).tolist() for p in params]
    elif method == "uncertainty":
        result[method] = {"log_vars": run.balancer.log_vars.grad.tolist(),
                          "embeddings": run.model.encoder.embeddings.word_embeddings.weight.grad.reshape(-1).tolist()}
    else:
        run.state.global_step, run.state.epoch = 1, 1.0  # the step ended an epoch: window 0 ends
        next(c for c in run.callback_handler.callbacks if isinstance(c, BalancingSteps)).on_step_end(
            run.args, run.state, TrainerControl())
        result[method] = run.balancer.history
result["world_size"] = dist.get_world_size()
with open(out / f"rank{dist.get_rank()}.json", "w") as f:
    json.dump(result, f)
dist.barrier()
