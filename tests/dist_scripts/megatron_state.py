"""The freq_loss resume and the loss-dict telemetry of ``Sift`` on a megatron-core BertModel, run inside
megatron_sift.py's ranks (``--state_check``; they share its process group and TP / DP layout).

* resume: a run that trains 6 iterations of 2 micro-steps with ``criterion="freq_loss"`` (the
  running baseline) and keeps a checkpoint after iteration 3 (model, optimizer, ``sift.state_dict()``,
  serialised as a script would write them); a new model of other weights, a new optimizer and a new
  ``Sift`` loaded from it then train iterations 3-5: the same kept rows, scores and losses, exactly;
* telemetry: every training micro-step's loss dict carries the same keys, the timing keys among
  them, but the first (no micro-step has ended before it: no timing keys); the ``[sum, count]`` pairs summed over the micro-steps (as Megatron reduces them) equal the
  test's own sums of the recorded scores and kept rows.
"""
import io
import math

import megatron_common as mc
import torch
from megatron.core import parallel_state as ps
from torch.utils.data import DataLoader

from sift_ds import SiftConfig
from sift_ds.megatron import GrossDataset, Sift

MICRO, FACTOR, ITERATIONS, SAVED_AT = 4, 2, 6, 3
CONFIG = dict(criterion="freq_loss", exit_layer=1, keep_ratio=1 / FACTOR, scope="global", kernel="torch",
              selection_start_step=0, options={"baseline_decay": 0.7})


def batches(dp_rank):
    """The gross micro-batches, in order (TP rank 0 reads them; the others get None)."""
    data = GrossDataset(mc.samples(MICRO * FACTOR * ITERATIONS * 2, seed=300 + dp_rank), FACTOR)
    return list(DataLoader(data, batch_size=MICRO, shuffle=False))


def trainer(seed, step):
    model = mc.build_bert(seed=seed, dropout=0.0)
    sift = Sift(SiftConfig(**CONFIG), iteration=lambda: step["i"])
    return model, torch.optim.Adam(model.parameters(), lr=3e-3), sift, sift.forward_step(mc.forward_step)


def train(parts, step, items, iterations):
    """(kept indices, scores, loss, loss dict) of each micro-step of ``iterations``."""
    model, opt, sift, wrapped = parts
    model.train()
    out = []
    for i in iterations:
        step["i"] = i
        opt.zero_grad()
        for micro in range(2):
            item = items[2 * i + micro]
            output, loss_func = wrapped(iter([item]) if ps.get_tensor_model_parallel_rank() == 0 else None, model)
            loss, stats = loss_func(output)
            (loss / 2).backward()
            out.append((sift.last.indices.tolist(), sift.last.scores.tolist(), sift.last.kept.tolist(), loss.item(),
                        {k: v.tolist() for k, v in stats.items()}))
        opt.step()
    return out


def serialised(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def state_checks(dp_rank):
    items, step = batches(dp_rank), {"i": 0}
    whole = trainer(seed=21, step=step)
    want = train(whole, step, items, range(SAVED_AT))
    model, opt, sift, _ = whole
    saved = serialised({"model": model.state_dict(), "optimizer": opt.state_dict(), "sift": sift.state_dict()})
    want += train(whole, step, items, range(SAVED_AT, ITERATIONS))

    resumed = trainer(seed=22, step=step)  # a new process: other weights, no baseline
    resumed[0].load_state_dict(saved["model"])
    resumed[1].load_state_dict(saved["optimizer"])
    resumed[2].load_state_dict(saved["sift"])
    got = train(resumed, step, items, range(SAVED_AT, ITERATIONS))
    tail = want[2 * SAVED_AT:]
    res = {"baseline_saved": saved["sift"]["criterion"] is not None,
           "resumed_same": [g[:4] == w[:4] for g, w in zip(got, tail)],
           "selections_vary": len({tuple(w[0]) for w in tail}) > 1}

    # the loss dict: the same keys every micro-step; its pairs summed over them against the records
    keys = [sorted(w[4]) for w in want]
    sums = {k: [sum(w[4][k][j] for w in want if k in w[4]) for j in (0, 1)]
            for k in keys[1] if k.startswith("sift/")}
    kept_sum = kept_n = 0.0
    for _, scores, kept, _, _ in want:
        for s, k in zip(scores, kept):
            if k and math.isfinite(s):
                kept_sum, kept_n = kept_sum + s, kept_n + 1
    res.update(same_keys=all(k == keys[1] for k in keys[1:]), keys=keys[1],
               first_keys=keys[0],
               kept_pair=sums["sift/score_kept_mean"], kept_expected=[kept_sum, kept_n],
               fraction_pair=sums["sift/kept_fraction"],
               fraction_expected=[float(sum(sum(w[2]) for w in want)), float(sum(len(w[2]) for w in want))],
               time_pair=sums["sift/selection_time_s"], share_pair=sums["sift/selection_share"])
    return res
