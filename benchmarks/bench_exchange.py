"""Bytes each rank receives per micro-step in the global-scope selection: measured at world 2 and 4
(gloo, CPU), modelled for 8 to 512 ranks.

    pytest benchmarks/bench_exchange.py --benchmark-only -s

Shape: BERT-base pretraining rows (seq 512; input_ids, attention_mask, token_type_ids, labels travel
as int32: 8 KiB a row), gross batch 64 -> micro-batch 32 per rank. Scores are i.i.d. across ranks
(the loader shuffles the corpus over ranks), so a rank's share of the global top-k is
hypergeometric and only the few rows past ``keep`` move.

* measured: ``exchange_kept_rows`` on real gloo ranks (``torch.multiprocessing``), every torch.distributed
  call wrapped and the bytes received from other ranks counted, including the scores' all-gather;
* model: the same plan (``row_exchange.exchange_plan``) on random scores, ``deficit x row bytes +
  (world - 1) x gross x 4`` per rank, next to the all-gather of whole gross batches it replaces,
  ``(world - 1) x gross x row bytes``.

``extra_info`` holds both per world size; the measured figure must equal the model's formula
applied to the measured deficits, and stay far below the old all-gather. The measured rows run
with ``--benchmark-only`` (a plain ``pytest benchmarks`` skips them: tests/test_row_exchange.py
checks the same bounds on 2 and 4 ranks).
"""
from __future__ import annotations

import os
import random
import tempfile

import pytest
import torch

from sift_ds.ports import free_port
from sift_ds.row_exchange import exchange_plan

SEQ, GROSS, KEEP = 512, 64, 32
KEYS = 4  # int32 columns per token: input_ids, attention_mask, token_type_ids, labels
ROW_BYTES = KEYS * SEQ * 4
STEPS = 6


def model_bytes(world: int, trials: int = 0, seed: int = 0):
    """Mean and max bytes received per rank per step under the plan, and the old all-gather's."""
    rng = random.Random(seed)
    recv = []
    for _ in range(trials or max(8, 2048 // world)):
        kept = rng.sample(range(world * GROSS), world * KEEP)  # i.i.d. scores: a uniform kept set
        counts = [0] * world
        for i in kept:
            counts[i // GROSS] += 1
        plan = exchange_plan(counts, KEEP)
        for r in range(world):
            recv.append(sum(plan[s][r] for s in range(world)) * ROW_BYTES + (world - 1) * GROSS * 4)
    return sum(recv) / len(recv), max(recv), (world - 1) * GROSS * ROW_BYTES


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist

    from sift_ds import selector
    from sift_ds.row_exchange import exchange_kept_rows

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    counted = {"bytes": 0}
    real_all_gather, real_a2a = dist.all_gather, dist.all_to_all_single

    def all_gather(out, tensor, group=None, **kw):
        counted["bytes"] += (world - 1) * tensor.numel() * tensor.element_size()
        return real_all_gather(out, tensor, group=group, **kw)

    def all_to_all_single(output, inp, output_split_sizes=None, input_split_sizes=None, group=None, **kw):
        per_row = output.element_size() * (output[0].numel() if output.shape[0] else 0)
        counted["bytes"] += per_row * sum(n for s, n in enumerate(output_split_sizes) if s != rank)
        return real_a2a(output, inp, output_split_sizes, input_split_sizes, group=group, **kw)

    dist.all_gather, dist.all_to_all_single = all_gather, all_to_all_single
    per_step = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(1000 * step + rank)
        batch = {k: torch.randint(0, 30522, (GROSS, SEQ), generator=g) for k in
                 ("input_ids", "attention_mask", "token_type_ids", "labels")}
        scores = torch.rand(GROSS, generator=g)
        counted["bytes"] = 0
        everyone = selector.gather_scores(scores)
        indices = selector.local_topk(everyone, KEEP * world, "torch")
        kept, trained = exchange_kept_rows(batch, indices, KEEP)
        own = int(((indices // GROSS) == rank).sum())
        per_step.append((counted["bytes"], max(KEEP - own, 0), int(kept["input_ids"].shape[0])))
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(repr(per_step))
    dist.destroy_process_group()


def measure(world: int):
    import ast

    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        torch.multiprocessing.spawn(_worker, args=(world, port, out), nprocs=world, join=True)
        return [ast.literal_eval(open(os.path.join(out, f"rank{r}.txt")).read()) for r in range(world)]


@pytest.mark.parametrize("world", [2, 4])
def test_exchange_bytes_measured(benchmark, request, world):
    if not request.config.getoption("benchmark_only", False):
        pytest.skip("runs with --benchmark-only; in CI tests/test_row_exchange.py counts the same bytes on 2 and 4 ranks")
    benchmark.group = "global exchange bytes per rank per step"
    ranks = benchmark.pedantic(measure, args=(world,), rounds=1, iterations=1)
    got = [b for steps in ranks for b, _, _ in steps]
    for steps in ranks:
        for received, deficit, rows in steps:
            assert rows == KEEP
            assert received == deficit * ROW_BYTES + (world - 1) * GROSS * 4, (received, deficit)
    _, _, old = model_bytes(world, trials=1)
    assert max(got) < old / 4
    benchmark.extra_info.update({"world": world, "row_bytes": ROW_BYTES, "mean_received_bytes": sum(got) / len(got),
                                 "max_received_bytes": max(got), "all_gather_bytes_before": old})


def test_exchange_bytes_model(benchmark):
    benchmark.group = "global exchange bytes per rank per step"
    table = benchmark.pedantic(lambda: {w: model_bytes(w) for w in (2, 4, 8, 32, 128, 512)}, rounds=1, iterations=1)
    for world, (mean, peak, old) in table.items():
        assert mean < old / 8 and peak <= KEEP * ROW_BYTES + (world - 1) * GROSS * 4
        benchmark.extra_info[f"world_{world}"] = {"mean_bytes": round(mean), "max_bytes": peak, "all_gather_bytes": old}
    print("\nworld | received per rank per step, mean / max (model) | all-gather of gross batches (before)")
    for world, (mean, peak, old) in table.items():
        print(f"{world:5d} | {mean / 2**20:8.3f} MiB / {peak / 2**20:8.3f} MiB | {old / 2**20:10.1f} MiB")
