"""Run under torchrun with 2 processes (CPU, gloo): AsyncConvergenceTrainer under Trainer's DDP, run
uninterrupted, then stopped and resumed from that checkpoint: with the frozen teacher after the scripted
switch, with cached logits before it. Writes both runs' log records after the stop, per teacher, to
<out>/rank<r>.json (tests/test_async_convergence_hf.py)."""
import argparse
import json
import os
import pathlib
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from multitask_tiny import EVERY, three_runs  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
args = p.parse_args()

out = pathlib.Path(args.out)
result = {}
for teacher, stop_at in (("frozen", 3 * EVERY), ("cached", EVERY)):
    whole, resumed, _ = three_runs(out / teacher, teacher, stop_at)
    result[teacher] = {"whole": whole, "resumed": resumed}
result["world_size"] = dist.get_world_size()  # the process group is Trainer's (TrainingArguments starts it)
with open(out / f"rank{dist.get_rank()}.json", "w") as f:
    json.dump(result, f)
dist.barrier()
