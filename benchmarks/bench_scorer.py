"""Fused Triton scorer vs the baselines a user would compare it with.

    pytest benchmarks --benchmark-only

Rows (``impl``):

* ``triton`` / ``triton-unpacked`` -- the fused kernel on the compacted rows (the engine's path) /
  on ``[B, S, H]`` with on-device compaction;
* ``bf16-eager`` -- what a user writes in PyTorch: bf16 matmul ``rows @ W.T + b`` (tensor cores),
  then fp32 log-softmax, cross-entropy and the per-sequence mean; ``bf16-compile`` is
  ``torch.compile`` of it;
* ``liger`` -- Liger-Kernel's fused linear cross-entropy (``liger-kernel`` package) where it installs;
* ``torch`` / ``torch-compile`` -- the fp32 reference twin (TF32 off; the correctness twin, not
  a speed baseline) and ``torch.compile`` of it;
* ``matmul`` -- a plain bf16 ``rows @ W.T`` of the same size: the tensor-core ceiling.

Shapes (CUDA, bf16): the BERT-base selection batch (64 x 512 tokens, 15% masked -> ~4.9k scored
rows, H 768, V 30522, tied head with bias) and the causal-LM heads, untied without bias: Llama 3
(H 4096, V 128256) at 8192 scored positions and at 1024 (fewer 128-row blocks than SMs: the vocabulary
split fills the GPU), and Qwen2 (H 3584, V 151936) at 8192. Every timed call
synchronises CUDA. ``extra_info`` holds rows / H / V, TFLOP/s (2 N H V / median time), the fraction
of the device's datasheet dense bf16 peak, peak and extra memory, and for the Triton rows the
config the autotuner chose and the matmul TFLOP/s measured in the same run. Every row's output is
checked against the fp32 reference of the same inputs before it is timed (the reference itself
against float64 math), so a fast wrong kernel fails here.

Without CUDA the torch reference and the bf16 eager baseline run at two small shapes (with and
without bias), so that CI exercises this file (and those checks) in seconds; the other rows and the
large shapes are skipped.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

from sift_ds.kernels.reference import packed_sequence_scores_torch, reduce_to_sequences

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
# name: (sequences, tokens, labelled fraction, H, V, head bias); the rows scored are the labelled
# positions (bert-base: 15% of 64 x 512 tokens; the causal heads score every position given).
SHAPES = (
    {"bert-base": (64, 512, 0.15, 768, 30522, True), "llama3": (16, 512, 1.0, 4096, 128256, False),
     "llama3-1k": (8, 128, 1.0, 4096, 128256, False), "qwen2": (8, 1024, 1.0, 3584, 151936, False)}
    if CUDA
    else {"cpu-small": (8, 64, 0.15, 128, 2048, True), "cpu-small-untied": (4, 32, 1.0, 64, 4096, False)}
)
ROUNDS, WARMUP = (20, 3) if CUDA else (5, 1)
IMPLS = ("matmul", "triton", "triton-unpacked", "bf16-eager", "bf16-compile", "liger", "torch", "torch-compile")
CPU_IMPLS = ("torch", "bf16-eager")
# Dense bf16 tensor-core peak from the datasheets (TFLOP/s, no sparsity), matched on the device name.
# torch names the H100 SXM "NVIDIA H100 80GB HBM3" and the PCIe card "NVIDIA H100 PCIe".
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0,
                         "A10G": 70.0, "A10": 125.0, "L40S": 362.0, "L4": 121.0}
# Largest deviation from the fp32 reference allowed per row: fp32 accumulation (Triton) or logits
# rounded to bf16 (eager bf16, Liger: |z| / 256 per logit, logits of std ~1 here).
TOL = {"triton": 2e-3, "triton-unpacked": 2e-3, "bf16-eager": 5e-2, "bf16-compile": 5e-2, "liger": 5e-2,
       "torch": 1e-5, "torch-compile": 1e-3}


def datasheet_peak(name: str):
    for key, peak in DATASHEET_BF16_TFLOPS.items():  # most specific first
        if key in name:
            return peak
    return None


@functools.lru_cache(maxsize=None)
def make_inputs(shape: str):
    """Hidden states, labels and their compaction (rows, targets, sequence ids), head W and b."""
    return build_inputs(*SHAPES[shape], device=DEVICE, dtype=DTYPE)


def build_inputs(b, s, frac, h, v, with_bias=True, *, device, dtype, seed=0):
    """Random inputs of ``b`` sequences of ``s`` tokens, a share ``frac`` of them labelled, hidden size
    ``h``, vocabulary ``v``: hidden [b, s, h], labels [b, s], their compaction (rows [N, h], targets
    [N], seq [N]), W [v, h] scaled to logits of std ~1, and a bias (None without ``with_bias``)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, s, h, generator=g).to(dtype)
    labels = torch.randint(0, v, (b, s), generator=g)
    labels[torch.rand(b, s, generator=g) >= frac] = -100
    flat = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    w = (torch.randn(v, h, generator=g) / h**0.5).to(dtype)
    bias = (0.1 * torch.randn(v, generator=g)).to(dtype).to(device) if with_bias else None
    hidden, labels, flat, w = (t.to(device) for t in (hidden, labels, flat, w))
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


def bf16_eager_scores(rows, w, b, targets, seq, num_seqs, criterion="loss"):
    """The baseline a PyTorch user writes: bf16 matmul, fp32 log-softmax CE (or entropy), per-sequence mean."""
    z = torch.nn.functional.linear(rows.to(torch.bfloat16), w.to(torch.bfloat16),
                                   None if b is None else b.to(torch.bfloat16))
    logp = torch.log_softmax(z.float(), dim=-1)
    if criterion == "entropy":
        tok = -(logp.exp() * logp).sum(-1)
    else:
        tok = -logp.gather(1, targets[:, None]).squeeze(1)
    return reduce_to_sequences(tok, seq, num_seqs)


def liger_scores(rows, w, b, targets, seq, num_seqs):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(reduction="none")
    ce = loss(w, rows, targets, b)
    ce = (ce[0] if isinstance(ce, tuple) else ce).float()
    return reduce_to_sequences(ce, seq, num_seqs)


def cce_scores(rows, w, targets, seq, num_seqs):
    """Cut Cross-Entropy (``cut-cross-entropy`` package) per token, then the per-sequence mean. CCE
    takes no bias: compare it with a reference without one."""
    from cut_cross_entropy import linear_cross_entropy

    ce = linear_cross_entropy(rows, w, targets, reduction="none").float()
    return reduce_to_sequences(ce, seq, num_seqs)


def float64_scores(x, criterion="loss", bias=True):
    """Independent float64 math: log-softmax CE (or entropy) per row, mean per sequence (checks the reference)."""
    parts = []
    for lo in range(0, x["rows"].shape[0], 1024):  # 1024 rows of float64 logits at a time
        z = x["rows"][lo : lo + 1024].double() @ x["w"].double().T
        logp = torch.log_softmax(z + x["b"].double() if bias and x["b"] is not None else z, -1)
        if criterion == "entropy":
            parts.append(-(logp.exp() * logp).sum(-1))
        else:
            parts.append(-logp.gather(1, x["targets"][lo : lo + 1024, None]).squeeze(1))
    ce = torch.cat(parts)
    total = torch.zeros(x["num_seqs"], dtype=torch.float64, device=ce.device).index_add_(0, x["seq"], ce)
    count = torch.zeros_like(total).index_add_(0, x["seq"], torch.ones_like(ce))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("-inf")))


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
    if impl == "bf16-eager":
        return lambda: bf16_eager_scores(*args[:-1])
    if impl == "bf16-compile":
        compiled = torch.compile(bf16_eager_scores)
        return lambda: compiled(*args[:-1])
    if impl == "liger":
        pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (pip install liger-kernel)")
        return lambda: liger_scores(*args[:-1])
    from sift_ds.kernels.ops.triton_scorer import packed_sequence_scores_triton, sequence_scores_triton

    if impl == "triton":  # the same compacted rows as the references
        return lambda: packed_sequence_scores_triton(*args)
    # from [B, S, H] and the labels: on-device compaction, no host sync
    return lambda: sequence_scores_triton(x["hidden"], x["w"], x["b"], x["labels"], "loss")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_scorer(benchmark, shape, impl):
    if impl not in CPU_IMPLS and not CUDA:
        pytest.skip("needs CUDA (without it only the torch reference and the bf16 eager baseline run)")
    benchmark.group = f"scorer {shape}"
    x = make_inputs(shape)
    fn = scorer(impl, x)

    def timed():
        out = fn()
        _sync()
        return out

    out = timed()  # compile / autotune outside the timing and the memory peak
    if impl == "matmul":
        assert out.shape == (x["rows"].shape[0], x["w"].shape[0])
    else:  # the output must be right before its time means anything
        want = reference_scores(shape)
        assert out.shape == want.shape and torch.equal(torch.isfinite(out), torch.isfinite(want)), impl
        finite = torch.isfinite(want)
        err = (out[finite].double() - want[finite].double()).abs().max().item()
        assert err <= TOL[impl], f"{impl}: max |score - fp32 reference| = {err:.3g} > {TOL[impl]}"
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
        name = torch.cuda.get_device_name()
        info.update(peak_mem_mib=round(peak / 2**20, 1), extra_mem_mib=round((peak - base) / 2**20, 1), device=name)
        datasheet = datasheet_peak(name)
        if datasheet:
            info.update(datasheet_bf16_tflops=datasheet, fraction_of_datasheet_peak=round(tflops / datasheet, 3))
        if impl.startswith("triton"):
            from sift_ds.kernels.ops.scorer_launch import last_config

            mm = matmul_tflops(shape)
            info.update(matmul_tflops=round(mm, 2), fraction_of_matmul=round(tflops / mm, 3),
                        autotuned_config=str(last_config(DEVICE)))
    benchmark.extra_info.update(info)


@functools.lru_cache(maxsize=None)
def reference_scores(shape: str) -> torch.Tensor:
    """The fp32 reference twin's scores, itself checked against float64 math."""
    x = make_inputs(shape)
    ref = packed_sequence_scores_torch(x["rows"], x["w"], x["b"], x["targets"], x["seq"], x["num_seqs"], "loss")
    want = float64_scores(x)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(ref), finite)
    torch.testing.assert_close(ref[finite].double(), want[finite], atol=2e-4 if CUDA else 2e-5, rtol=0)
    return ref


def test_reference_is_checked_against_float64():
    """The check can fail: a reference with an off-by-one target would be caught."""
    x = make_inputs(next(iter(SHAPES)))
    bad = packed_sequence_scores_torch(x["rows"], x["w"], x["b"], (x["targets"] + 1) % x["w"].shape[0],
                                       x["seq"], x["num_seqs"], "loss")
    want = float64_scores(x)
    finite = torch.isfinite(want)
    assert (bad[finite].double() - want[finite]).abs().max() > 0.1
    assert torch.isfinite(reference_scores(next(iter(SHAPES)))).any()
