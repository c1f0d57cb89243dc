"""Fused Triton scorer vs. the torch reference (logits materialised) vs. ``torch.compile`` of it.

    pytest benchmarks --benchmark-only

Shapes (CUDA, bf16): the BERT-base selection batch (64 x 512 tokens, 15% masked -> ~4.9k scored
rows, H 768, V 30522) and a large-vocabulary head (the same rows, H 4096, V 128256). Each shape
also times a plain bf16 matmul ``rows @ W.T`` of the same size (the tensor-core ceiling the
fused kernel is compared with). Every timed call synchronises CUDA. ``extra_info`` holds the
rows / H / V, TFLOP/s (2 N H V / median time), the peak memory (``torch.cuda.max_memory_allocated``)
and the memory beyond the inputs; the Triton rows add the matmul TFLOP/s measured in the same
run and their fraction of it.

Without CUDA only the torch reference runs, at a small fp32 shape, so that CI exercises this file
in seconds; the Triton, compile and matmul rows are skipped.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

from sift_ds.kernels.reference import packed_sequence_scores_torch

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
# name: (batch, seq_len, masked fraction, H, V)
SHAPES = (
    {"bert-base": (64, 512, 0.15, 768, 30522), "large-vocab": (64, 512, 0.15, 4096, 128256)}
    if CUDA
    else {"cpu-small": (8, 64, 0.15, 128, 2048)}
)
ROUNDS, WARMUP = (20, 3) if CUDA else (5, 1)
IMPLS = ("matmul", "triton", "triton-unpacked", "torch", "torch-compile")


@functools.lru_cache(maxsize=None)
def make_inputs(shape: str):
    """Hidden states, labels and their compaction (rows, targets, sequence ids), head W and b."""
    b, s, frac, h, v = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, s, h, generator=g).to(DTYPE)
    labels = torch.randint(0, v, (b, s), generator=g)
    labels[torch.rand(b, s, generator=g) >= frac] = -100
    flat = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    w = (torch.randn(v, h, generator=g) / h**0.5).to(DTYPE)
    bias = (0.1 * torch.randn(v, generator=g)).to(DTYPE)
    hidden, labels, flat, w, bias = (t.to(DEVICE) for t in (hidden, labels, flat, w, bias))
    rows = hidden.reshape(-1, h).index_select(0, flat)
    return {
        "hidden": hidden, "labels": labels, "rows": rows, "targets": labels.reshape(-1)[flat],
        "seq": torch.div(flat, s, rounding_mode="floor"), "num_seqs": b, "w": w, "b": bias,
    }


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@functools.lru_cache(maxsize=None)
def matmul_tflops(shape: str) -> float:
    """bf16 ``rows @ W.T`` TFLOP/s (median of CUDA-event timings) for the fraction-of-matmul figure."""
    x = make_inputs(shape)
    rows, w = x["rows"], x["w"]
    for _ in range(3):
        rows @ w.T
    times = []
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        rows @ w.T
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * rows.shape[0] * rows.shape[1] * w.shape[0] / times[len(times) // 2] / 1e12


def scorer(impl: str, x):
    """A no-argument callable running ``impl`` on the inputs ``x``."""
    args = (x["rows"], x["w"], x["b"], x["targets"], x["seq"], x["num_seqs"], "loss")
    if impl == "matmul":
        return lambda: x["rows"] @ x["w"].T
    if impl == "torch":
        return lambda: packed_sequence_scores_torch(*args)
    if impl == "torch-compile":
        compiled = torch.compile(packed_sequence_scores_torch)
        return lambda: compiled(*args)
    from sift_ds.kernels.triton_scorer import packed_sequence_scores_triton, sequence_scores_triton

    if impl == "triton":  # the same compacted rows as the references
        return lambda: packed_sequence_scores_triton(*args)
    # from [B, S, H] and the labels: on-device compaction, no host sync
    return lambda: sequence_scores_triton(x["hidden"], x["w"], x["b"], x["labels"], "loss")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_scorer(benchmark, shape, impl):
    if impl != "torch" and not CUDA:
        pytest.skip("needs CUDA (without it only the torch reference runs)")
    benchmark.group = f"scorer {shape}"
    x = make_inputs(shape)
    fn = scorer(impl, x)

    def timed():
        out = fn()
        _sync()
        return out

    timed()  # compile / autotune outside the timing and the memory peak
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)

    n, h = x["rows"].shape
    v = x["w"].shape[0]
    tflops = 2 * n * h * v / benchmark.stats.stats.median / 1e12
    info = {"rows": n, "H": h, "V": v, "dtype": str(DTYPE), "tflops": float(f"{tflops:.4g}")}
    if CUDA:
        peak = torch.cuda.max_memory_allocated()
        info.update(peak_mem_mib=round(peak / 2**20, 1), extra_mem_mib=round((peak - base) / 2**20, 1),
                    device=torch.cuda.get_device_name())
        if impl.startswith("triton"):
            mm = matmul_tflops(shape)
            info.update(matmul_tflops=round(mm, 2), fraction_of_matmul=round(tflops / mm, 3))
    benchmark.extra_info.update(info)
