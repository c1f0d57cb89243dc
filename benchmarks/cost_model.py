"""A cost model (not a measurement) of SIFT's selection stage per training micro-step and rank.

    python benchmarks/cost_model.py            # Markdown tables for docs/benchmarks.md

Per rank and micro-step: a gross batch of 64 sequences of 512 tokens is scored, 32 are trained
(keep 0.5, the paper's setting), 15% of tokens are masked.

* FLOPs (multiply-add = 2): an encoder layer costs ``24 H^2 + 4 S H`` per token (QKV + output
  projections 8 H^2, FFN with 4H 16 H^2, scores and weighted sum 4 S H); the MLM head
  ``2 H^2 + 2 H V`` per masked token (transform + tied decoder). Selection = the first k layers on
  every gross token + the head on the masked gross tokens (forward only). Training = the full
  model on the kept rows, forward + backward = 3 x forward, head on masked tokens only (the
  project's sparse MLM head). Top-k: ``world x gross`` scores, negligible.
* Bytes: bf16 weights of what runs (read once), and activations ~ 12 x tokens x H x 2 B per layer
  (reads + writes of the layer's intermediates; a rough count).
* Row exchange: the bytes ``row_exchange.exchange_plan`` moves for i.i.d. scores (mean over random
  draws; benchmarks/bench_exchange.py), plus the scores' all-gather, over the inter-node link.
* Time = max(FLOPs / (efficiency x datasheet dense bf16 peak), bytes / HBM bandwidth) + exchange
  bytes / link bandwidth + a latency per collective. Efficiency 0.5 for every matmul (an
  assumption, the same for selection and training, so the compute share does not depend on it).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_exchange import model_bytes  # noqa: E402

SEQ, GROSS, MICRO, MASKED = 512, 64, 32, 0.15
MODELS = {"BERT-base": (12, 768, 30522), "BERT-large": (24, 1024, 30522)}
EXITS = (1, 2, 3, 6, 12)
WORLDS = (8, 64, 512)
# datasheet: dense bf16 TFLOP/s, HBM TB/s, inter-node link GB/s per GPU (HDR / NDR InfiniBand)
DEVICES = {"A100": (312.0, 2.0, 25.0), "H100 SXM": (989.4, 3.35, 50.0)}
EFFICIENCY = 0.5
COLLECTIVE_LATENCY_S = 20e-6  # per collective step (assumption); all-gather takes log2(world) steps


def layer_flops(tokens: int, H: int) -> float:
    return tokens * (24 * H * H + 4 * SEQ * H)


def head_flops(masked: int, H: int, V: int) -> float:
    return masked * (2 * H * H + 2 * H * V)


def selection_cost(L: int, H: int, V: int, k: int):
    """(FLOPs, bytes) of the selection pass of one rank's gross batch."""
    tokens = GROSS * SEQ
    masked = int(MASKED * tokens)
    flops = k * layer_flops(tokens, H) + head_flops(masked, H, V)
    weights = 2 * (k * 12 * H * H + H * H + V * H)
    activations = k * 12 * tokens * H * 2 + masked * H * 2
    return flops, weights + activations


def training_cost(L: int, H: int, V: int):
    tokens = MICRO * SEQ
    masked = int(MASKED * tokens)
    flops = 3 * (L * layer_flops(tokens, H) + head_flops(masked, H, V))
    weights = 3 * 2 * (L * 12 * H * H + H * H + V * H)
    activations = 3 * L * 12 * tokens * H * 2
    return flops, weights + activations


def seconds(flops: float, nbytes: float, device: str) -> float:
    peak, hbm, _ = DEVICES[device]
    return max(flops / (EFFICIENCY * peak * 1e12), nbytes / (hbm * 1e12))


def exchange_seconds(world: int, device: str, row_bytes: int) -> float:
    mean, _, _ = model_bytes(world)
    mean = mean / (4 * SEQ * 4) * row_bytes  # model_bytes counts 4 int32 keys per token
    steps = max(1, (world - 1).bit_length())
    return mean / (DEVICES[device][2] * 1e9) + (steps + 1) * COLLECTIVE_LATENCY_S


def share_table() -> str:
    """Selection share of the step: (selection + exchange) / (selection + exchange + training)."""
    row_bytes = 4 * SEQ * 4
    heads = " | ".join(f"share, {dev}, world {' / '.join(map(str, WORLDS))}" for dev in DEVICES)
    rows = [f"| model | exit layer | selection GFLOP | training GFLOP | {heads} | paper (abstract only, end to end) |",
            "|" + "---|" * (5 + len(DEVICES))]
    exchange = {(w, dev): exchange_seconds(w, dev, row_bytes) for w in WORLDS for dev in DEVICES}
    for name, (L, H, V) in MODELS.items():
        train = training_cost(L, H, V)
        for k in EXITS:
            if k > L:
                continue
            sel = selection_cost(L, H, V, k)
            cells = []
            for dev in DEVICES:
                ts, tt = seconds(*sel, dev), seconds(*train, dev)
                cells.append(" / ".join(f"{100 * (ts + exchange[w, dev]) / (ts + exchange[w, dev] + tt):.1f}%"
                                        for w in WORLDS))
            paper = "≈43 h vs ≈57 h vanilla to 64% val. acc." if (name, k) == ("BERT-base", 1) else "—"
            rows.append(f"| {name} | {k} | {sel[0] / 1e9:.0f} | {train[0] / 1e9:.0f} | {' | '.join(cells)} | {paper} |")
    return "\n".join(rows)


def exchange_table() -> str:
    row_bytes = 4 * SEQ * 4
    rows = ["| world | exchange + scores per rank per step (model) | before: all-gather of gross batches "
            "| exchange time A100 / H100 (model) | share of a BERT-base exit-1 step, H100 (model) "
            "| before: all-gather time / share, H100 (model) |",
            "|---|---|---|---|---|---|"]
    L, H, V = MODELS["BERT-base"]
    step_h100 = seconds(*selection_cost(L, H, V, 1), "H100 SXM") + seconds(*training_cost(L, H, V), "H100 SXM")
    for world in WORLDS:
        mean, _, before = model_bytes(world)
        ta, th = exchange_seconds(world, "A100", row_bytes), exchange_seconds(world, "H100 SXM", row_bytes)
        t_before = before / (DEVICES["H100 SXM"][2] * 1e9) + max(1, (world - 1).bit_length()) * COLLECTIVE_LATENCY_S
        rows.append(f"| {world} | {mean / 1024:.0f} KiB | {before / 2**20:.1f} MiB | {ta * 1e6:.0f} µs / {th * 1e6:.0f} µs "
                    f"| {100 * th / (step_h100 + th):.2f}% | {t_before * 1e3:.2f} ms / "
                    f"{100 * t_before / (step_h100 + t_before):.1f}% |")
    return "\n".join(rows)


# The fused scorer's roofline. Datasheet figures: dense bf16 TFLOP/s, HBM TB/s, SMs, FP32 and
# special-function (exp2) lanes per SM, and the clock (GHz) at which the bf16 figure is quoted.
KERNEL_DEVICES = {
    "H100 SXM": (989.4, 3.35, 132, 128, 16, 1.83),
    "H200": (989.4, 4.8, 132, 128, 16, 1.83),
}
# name: (rows scored, H, V). bert-base: 64 x 512 tokens, 15% masked (tied head with bias); the causal
# heads are untied without bias: Llama 3 8B (V 128,256) at 8,192 and 1,024 rows, Qwen2 7B (V 151,936)
# at 8,192 rows (e.g. 64 sequences x 128 scored positions, or 16 x 512 every position).
KERNEL_SHAPES = {"bert-base": (4915, 768, 30522), "llama3": (8192, 4096, 128256), "llama3-1k": (1024, 4096, 128256),
                 "qwen2": (8192, 3584, 151936)}
EPILOGUE_FP32_OPS = 7  # per logit after exp2 pre-scaling: FMA (scale + bias), max, sub, 2 adds, mul, select
MMA_EFFICIENCY = (0.6, 0.75)  # assumed range of tensor peak the main loop sustains at 1-2 CTAs/SM
BLOCK_N, GROUP_N = 128, 8  # the plan's row block; W is streamed once per group of GROUP_N row blocks


def scorer_model(n: int, H: int, V: int, device: str) -> dict:
    """The fused scorer in the model: FLOPs ``2 N H V``; bytes read (W once per group of row blocks,
    the rows once per vocabulary split, bf16) and the partial statistics written and merged (fp32);
    whole waves of (row block, split) programs from ``plan_splits`` at 1 CTA per SM; the MMA main loop
    at MMA_EFFICIENCY of the datasheet peak; the epilogue (FP32 + one exp2 per logit) not overlapped
    with it. Time = max(MMA + epilogue, bytes / HBM bandwidth)."""
    from sift_ds.kernels.ops.scorer_launch import plan_splits

    peak, hbm, sms, fp32, sfu, ghz = KERNEL_DEVICES[device]
    flops = 2 * n * H * V
    split, splits = plan_splits(V, n, sms)
    blocks = -(-n // BLOCK_N)
    waves = -(-(blocks * splits) // sms)
    groups = -(-blocks // GROUP_N)
    nbytes = groups * V * H * 2 + splits * n * H * 2 + 2 * 4 * 4 * splits * n
    logits = n * V
    t_epi = logits * EPILOGUE_FP32_OPS / (sms * fp32 * ghz * 1e9) + logits / (sms * sfu * ghz * 1e9)
    t_mem = nbytes / (hbm * 1e12)
    out = dict(flops=flops, bytes=nbytes, split=split, splits=splits, waves=blocks * splits / sms,
               whole_waves=waves, t_epi=t_epi, t_mem=t_mem, ridge=peak / hbm, t_mma=[], t=[], fraction=[])
    for eff in MMA_EFFICIENCY:
        t_mma = flops / (peak * 1e12 * eff) * (waves * sms) / (blocks * splits)
        t = max(t_mma + t_epi, t_mem)
        out["t_mma"].append(t_mma)
        out["t"].append(t)
        out["fraction"].append(flops / t / (peak * 1e12))
    return out


# Eager bf16 baseline (what a PyTorch user writes: bf16 matmul, then an fp32 log-softmax CE): bytes
# per logit moved after the matmul -- bf16 logits written and read (2 + 2), upcast to fp32 written
# and read (4 + 4), log-softmax written (4) -- and held at its peak (bf16 + fp32 + log-softmax).
EAGER_BYTES_PER_LOGIT, EAGER_HELD_PER_LOGIT = 16, 10


def eager_model(n: int, H: int, V: int, device: str) -> dict:
    """Eager bf16 in the same model: the matmul at MMA_EFFICIENCY of peak (cuBLAS, a full GPU), plus
    the memory-bound passes over the N x V logits at HBM bandwidth."""
    peak, hbm = KERNEL_DEVICES[device][:2]
    flops = 2 * n * H * V
    passes = n * V * EAGER_BYTES_PER_LOGIT / (hbm * 1e12)
    return dict(t=[flops / (peak * 1e12 * eff) + passes for eff in MMA_EFFICIENCY],
                held=n * V * EAGER_HELD_PER_LOGIT)


def roofline_table() -> str:
    """One row per shape and device: the fused scorer in the model (``scorer_model``)."""
    rows = ["| shape | device | GFLOP | MB moved | FLOP/B | ridge FLOP/B | splits × columns | waves "
            "| MMA time | epilogue | HBM time | expected time (model) | fraction of bf16 peak (model) "
            "| eager bf16 time (model) | eager logits held |",
            "|" + "---|" * 15]
    for name, (n, H, V) in KERNEL_SHAPES.items():
        for dev in KERNEL_DEVICES:
            m, e = scorer_model(n, H, V, dev), eager_model(n, H, V, dev)
            rows.append(f"| {name} ({n} × {H} × {V}) | {dev} | {m['flops'] / 1e9:.0f} | {m['bytes'] / 1e6:.0f} "
                        f"| {m['flops'] / m['bytes']:.0f} | {m['ridge']:.0f} | {m['splits']} × {m['split']} "
                        f"| {m['waves']:.2f} | {m['t_mma'][1] * 1e3:.2f}–{m['t_mma'][0] * 1e3:.2f} ms "
                        f"| {m['t_epi'] * 1e3:.2f} ms | {m['t_mem'] * 1e3:.2f} ms "
                        f"| {m['t'][1] * 1e3:.2f}–{m['t'][0] * 1e3:.2f} ms "
                        f"| {m['fraction'][0]:.0%}–{m['fraction'][1]:.0%} "
                        f"| {e['t'][1] * 1e3:.2f}–{e['t'][0] * 1e3:.2f} ms | {e['held'] / 2**30:.1f} GiB |")
    return "\n".join(rows)


if __name__ == "__main__":
    print("Selection share of a micro-step (compute and memory; model)\n")
    print(share_table())
    print("\nGlobal-scope row exchange (BERT-base rows, 8 KiB each; model)\n")
    print(exchange_table())
    print("\nFused scorer roofline (a model, not a measurement)\n")
    print(roofline_table())
