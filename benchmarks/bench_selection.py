"""Selection overhead per step: SIFT's early-exit pass vs a naive pass vs the training step.

    pytest benchmarks/bench_selection.py --benchmark-only

* ``sift``  -- ``engine.select``: embeddings + the first ``exit_layer`` layers, vocab head on the
  labelled positions only, top-k (the production path);
* ``naive`` -- what an unoptimised implementation does: a full no-grad forward through every layer
  and every position through the vocab head, then the masked mean and top-k;
* ``train`` -- the rest of the step: forward / backward / optimizer step on the kept micro-batch.

``extra_info["selection_share"]`` = selection / (selection + train), the fraction of the step the
selection costs. On CUDA the shape is BERT-base at seq 512 (gross 64 -> micro 32, as in the paper);
without CUDA a mini BERT at a small shape, so CI runs this file in seconds.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import sift_ds  # noqa: E402
from sift_ds.ports import free_port  # noqa: E402
from sift_ds.pretrain.models import build_bert  # noqa: E402

# preset, vocab, seq_len, micro-batch, exit_layer
SHAPE = ("base", 30522, 512, 32, 1) if CUDA else ("mini", 8192, 64, 4, 1)
DTYPE = "bf16" if CUDA else "fp32"


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def setup():
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        os.environ.setdefault(k, v)
    preset, vocab, seq, micro, exit_layer = SHAPE
    torch.manual_seed(0)
    model = build_bert(preset, vocab_size=vocab, max_position_embeddings=max(seq, 512))
    cfg = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": {"stage": 1},
           "sift": {"exit_layer": exit_layer, "keep_ratio": 0.5, "scope": "local",  # a constant lr: select from
                    "selection_start_step": 0, "start_after_lr_peak": True}}   # step 0, the step measured
    if DTYPE == "bf16":
        cfg["bf16"] = {"enabled": True}
    engine = sift_ds.initialize(model=model, config=cfg)[0]
    g = torch.Generator().manual_seed(0)
    gross = engine.gross_batch_size
    ids = torch.randint(5, vocab, (gross, seq), generator=g)
    labels = torch.where(torch.rand(gross, seq, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": labels}
    return engine, batch


def _median_seconds(fn, reps=5):
    times = []
    for _ in range(reps):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _train_seconds(engine, batch):
    kept = engine.select(batch).batch

    def step():
        loss = engine(**kept).loss
        engine.backward(loss)
        engine.step()

    step()
    return _median_seconds(step, reps=3)


def _naive_select(engine, batch):
    model = engine.module
    dev = {k: v.to(engine.device) for k, v in batch.items()}
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=dev["input_ids"], attention_mask=dev["attention_mask"],
                       token_type_ids=dev["token_type_ids"]).logits.float()  # every layer, every position
        tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), dev["labels"], reduction="none")
        mask = dev["labels"] != -100
        scores = (tok * mask).sum(1) / mask.sum(1).clamp_min(1)
        keep = sift_ds.kernels.select_topk(scores, engine.micro_batch_size)
        out = {k: v[keep] for k, v in dev.items()}
    model.train()
    return out, keep


def _reference_scores(engine, batch, exit_layer=None, criterion="loss"):
    """Each row's score from Hugging Face's own forward, one row at a time in float64: after
    ``exit_layer`` encoder layers through the model's MLM head, the mean over the labelled positions
    of the cross-entropy (``loss``) or of the predictive entropy (``entropy``); or (None) the full
    model's ``.loss``."""
    model = engine.module
    model.eval()
    scores = []
    with torch.no_grad():
        for row in range(batch["input_ids"].shape[0]):
            one = {k: v[row : row + 1].to(engine.device) for k, v in batch.items()}
            if exit_layer is None:
                scores.append(model(**one).loss.double().item())
                continue
            hidden = model.bert(input_ids=one["input_ids"], attention_mask=one["attention_mask"],
                                token_type_ids=one["token_type_ids"], output_hidden_states=True).hidden_states
            logits = model.cls(hidden[exit_layer]).double()[0]
            labels = one["labels"][0]
            if criterion == "loss":
                scores.append(torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100).item())
            else:
                logp = torch.log_softmax(logits[labels != -100], dim=-1)
                scores.append(-(logp.exp() * logp).sum(-1).mean().item())
    model.train()
    return torch.tensor(scores, dtype=torch.float64)


def _check_against_reference(engine, batch, variant):
    """The benchmarked selection keeps the rows an independent reference ranks highest."""
    exit_layer = SHAPE[4] if variant == "sift" else None
    reference = _reference_scores(engine, batch, exit_layer, engine.sift_config.criterion)
    want = sorted(torch.topk(reference, engine.micro_batch_size).indices.tolist())
    if variant == "sift":
        selection = engine.select(batch)
        got = selection.indices.tolist()
        torch.testing.assert_close(selection.scores.double().cpu(), reference, rtol=1e-3 if CUDA else 1e-5,
                                   atol=1e-3 if CUDA else 1e-5)
    else:
        got = sorted(_naive_select(engine, batch)[1].tolist())
    assert got == want, f"{variant}: kept rows {got}, the reference's top-{engine.micro_batch_size}: {want}"


@pytest.mark.parametrize("variant", ["sift", "naive"])
def test_selection_overhead(benchmark, setup, variant):
    engine, batch = setup
    fn = (lambda: engine.select(batch)) if variant == "sift" else (lambda: _naive_select(engine, batch))

    def timed():
        out = fn()
        _sync()
        return out

    timed()
    benchmark.pedantic(timed, rounds=3 if not CUDA else 20, warmup_rounds=1)
    select_s = benchmark.stats.stats.median
    train_s = _train_seconds(engine, batch)
    preset, vocab, seq, micro, exit_layer = SHAPE
    benchmark.extra_info.update({
        "model": preset, "seq_len": seq, "gross_batch": engine.gross_batch_size, "micro_batch": micro,
        "exit_layer": exit_layer if variant == "sift" else "all", "dtype": DTYPE,
        "select_s": select_s, "train_step_s": train_s, "selection_share": select_s / (select_s + train_s),
    })
    assert 0 < benchmark.extra_info["selection_share"] < 1
    _check_against_reference(engine, batch, variant)
