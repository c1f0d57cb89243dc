"""The global-scope row exchange: the plan (pure), and ``SiftEngine.select`` on 2 and 4 gloo ranks.

Only the surplus of a rank's kept rows moves, to ranks with a deficit (issue 10, section 1): the
kept set stays the global top-k, the rows trained across ranks are exactly the kept rows, and the
bytes a rank receives are at most its deficit x row bytes plus the all-gathered scores.
"""
import itertools
import json
import os
import random
import threading

import pytest
import torch

from launcher import REPO, run_deepspeed
from sift_ds.row_exchange import exchange_plan

SCRIPT = os.path.join(REPO, "tests", "dist_scripts", "row_exchange_check.py")


def check_plan(counts, keep):
    plan = exchange_plan(counts, keep)
    world = len(counts)
    for r in range(world):
        sent, got = sum(plan[r]), sum(plan[s][r] for s in range(world))
        assert plan[r][r] == 0
        assert sent == max(counts[r] - keep, 0), "a rank sends exactly its surplus"
        assert got == max(keep - counts[r], 0), "a rank receives exactly its deficit"
        assert not (sent and got), "no rank both sends and receives"
        assert counts[r] - sent + got == keep
    return plan


def test_plan_all_small_cases():
    for world, keep in [(1, 3), (2, 1), (2, 3), (3, 2), (4, 2)]:
        gross = 2 * keep
        for counts in itertools.product(range(gross + 1), repeat=world):
            if sum(counts) == keep * world:
                check_plan(list(counts), keep)


def test_plan_large_world_and_order():
    rng = random.Random(0)
    world, keep = 512, 32
    for _ in range(20):
        # kept rows scattered at random over the ranks' gross batches of 2 x keep rows
        slots = rng.sample(range(world * 2 * keep), world * keep)
        counts = [0] * world
        for s in slots:
            counts[s // (2 * keep)] += 1
        check_plan(counts, keep)
    # surplus is handed out in rank order: rank 0's extra rows fill rank 1 first, then rank 2
    assert exchange_plan([4, 0, 2], 2) == [[0, 2, 0], [0, 0, 0], [0, 0, 0]]
    assert exchange_plan([3, 3, 1, 1], 2) == [[0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert exchange_plan([0, 4, 2, 2], 2) == [[0, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="cannot fill"):
        exchange_plan([1, 1], 2)


class ThreadWorld:
    """torch.distributed for ``exchange_rows`` emulated by threads in this process: rank = thread,
    ``all_to_all_single`` through shared buffers and a barrier (the real thing runs on gloo below)."""

    def __init__(self, world):
        self.world, self.local = world, threading.local()
        self.barrier = threading.Barrier(world)
        self.inbox = {}
        self.received = [0] * world

    def get_rank(self, group=None):
        return self.local.rank

    def get_world_size(self, group=None):
        return self.world

    def all_to_all_single(self, output, inp, output_split_sizes, input_split_sizes, group=None):
        me = self.local.rank
        chunks = torch.split(inp, input_split_sizes)
        for dst, chunk in enumerate(chunks):
            self.inbox[(me, dst)] = chunk.clone()
        self.barrier.wait()
        parts = [self.inbox[(src, me)] for src in range(self.world)]
        assert [p.shape[0] for p in parts] == list(output_split_sizes)
        output.copy_(torch.cat(parts))
        self.received[me] += output.numel() * output.element_size()
        self.barrier.wait()


@pytest.mark.parametrize("world,gross,keep", [(2, 6, 3), (4, 8, 4), (8, 4, 2)])
def test_exchange_rows_threads(monkeypatch, world, gross, keep):
    """Every rank gets exactly ``keep`` rows, their union is the kept set, each row equals its source,
    and a rank receives exactly its deficit of rows (random and skewed kept sets)."""
    from sift_ds import row_exchange

    fake = ThreadWorld(world)
    monkeypatch.setattr(row_exchange, "dist", fake)
    g = torch.Generator().manual_seed(world)
    for trial in range(6):
        batches = [{"input_ids": torch.randint(0, 99, (gross, 5), generator=g),
                    "mask": torch.rand(gross, 5, generator=g) > 0.5,
                    "weight": torch.randn(gross, 2, 3, generator=g)} for _ in range(world)]
        if trial < 2:  # skewed: every kept row on the first (or last) ranks
            order = torch.arange(world * gross) if trial == 0 else torch.arange(world * gross).flip(0)
            kept = torch.sort(order[: world * keep]).values
        else:
            kept = torch.sort(torch.randperm(world * gross, generator=g)[: world * keep]).values
        out = [None] * world
        fake.received = [0] * world

        def run(r):
            fake.local.rank = r
            out[r] = row_exchange.exchange_kept_rows(batches[r], kept, keep)

        threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(o is not None for o in out), "a rank did not finish"
        trained = torch.cat([o[1] for o in out])
        assert sorted(trained.tolist()) == kept.tolist()
        row_bytes = row_exchange.row_bytes(batches[0])
        for r, (rows, idx) in enumerate(out):
            assert idx.tolist() == sorted(idx.tolist()) and all(v.shape[0] == keep for v in rows.values())
            for key in rows:
                want = torch.stack([batches[int(i) // gross][key][int(i) % gross] for i in idx])
                assert torch.equal(rows[key], want), (r, key)
            own = int(((kept // gross) == r).sum())
            assert fake.received[r] == max(keep - own, 0) * row_bytes
            assert torch.equal(row_exchange.trained_indices(kept, keep, r, world, gross), idx)


@pytest.mark.parametrize("world", [2, 4])
def test_global_select_moves_only_the_deficit(tmp_path, world):
    run_deepspeed(SCRIPT, ["--out", tmp_path], num_gpus=world)
    results = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(world)]
    assert all(res["world"] == world for res in results)
    moved = 0
    for res in results:
        for rec in res["steps"]:
            what = f"rank step {rec['kind']}"
            assert rec["kept_rows"] == res["micro"], what
            assert rec["indices_agree"] and rec["indices_are_topk"], f"{what}: kept set is not the global top-k"
            assert rec["union_is_topk"] and rec["no_duplicates"], f"{what}: trained rows are not the kept rows"
            assert rec["rows_match"] and rec["trained_ascending"], f"{what}: a trained row is not its source row"
            bound = rec["deficit"] * rec["row_bytes"] + rec["score_bytes"]
            assert rec["received_bytes"] <= bound, f"{what}: received {rec['received_bytes']} B > {bound} B"
            assert set(rec["calls"]) <= {"all_gather", "all_to_all_single"}, rec["calls"]
            if rec["kind"] == "balanced":
                assert rec["deficit"] == 0 and rec["calls"] == ["all_gather"], "nothing to move, nothing sent"
            moved += rec["deficit"]
    assert moved > 0, "the forced steps must move rows"
