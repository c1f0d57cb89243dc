"""Run under torchrun (1 rank, CPU, gloo): the Megatron-DeepSpeed way, where forward_step's model is
a DeepSpeed engine around the model. The wrapped forward_step must find the megatron-core
BertModel inside the engine, follow the engine's global_steps (warm-up), send the telemetry as
1-element means, and train; evaluation passes through. Writes <out>/rank0.json."""
import argparse
import json
import os
import sys

import deepspeed
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import megatron_common as mc  # noqa: E402

from sift_ds import SiftConfig  # noqa: E402
from sift_ds.megatron import GrossDataset, Sift  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--local_rank", type=int, default=0)
args = p.parse_args()

mc.init(1)
model = mc.build_bert()
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config={
    "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
    "optimizer": {"type": "Adam", "params": {"lr": 3e-3, "torch_adam": True}}, "zero_optimization": {"stage": 0}})
sift = Sift(SiftConfig(exit_layer=1, keep_ratio=0.5, warmup_steps=2, kernel="torch"))  # iteration: global_steps
wrapped = sift.forward_step(mc.forward_step)
data = GrossDataset(mc.samples(16, seed=5), 2)
torch.manual_seed(0)
res = {"losses": [], "steps": [], "warmup": [], "telemetry_shapes": set()}
engine.train()
for _ in range(8):
    out, lf = wrapped(iter(DataLoader(data, batch_size=4)), engine)
    loss, stats = lf(out)
    engine.backward(loss)
    engine.step()
    res["losses"].append(loss.item())
    res["steps"].append(sift.last.step)
    res["warmup"].append(sift.last.warmup)
    res["telemetry_shapes"] |= {tuple(v.shape) for k, v in stats.items() if k.startswith("sift/")}
    res["kept_fraction"] = stats["sift/kept_fraction"].tolist()
res["telemetry_shapes"] = sorted(res["telemetry_shapes"])
engine.eval()
it = iter([mc.collate(mc.samples(8, seed=6))])
out, lf = wrapped(it, engine)
res["eval_same_iterator"] = mc.SEEN[-1][0] is it
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, "rank0.json"), "w") as f:
    json.dump(res, f)
