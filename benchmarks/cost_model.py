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


# Non-tensor throughput per SM and clock (datasheet): FP32 lanes, special-function (exp2) lanes, GHz.
SM_UNITS = {"A100": (108, 64, 16, 1.41), "H100 SXM": (132, 128, 16, 1.83)}
KERNEL_SHAPES = {"bert-base": (4915, 768, 30522), "large-vocab": (8192, 4096, 128256)}
EPILOGUE_FP32_OPS = 7  # per logit after exp2 pre-scaling: FMA (scale + bias), max, sub, 2 adds, mul, select
MMA_EFFICIENCY = (0.6, 0.75)  # assumed range of tensor peak the main loop sustains at 1-2 CTAs/SM


def roofline_table() -> str:
    """The fused scorer's FLOPs, bytes and waves per shape, and the fraction of bf16 peak the design
    can reach in this model: MMA at MMA_EFFICIENCY (a range), the epilogue (FP32 + exp2 per logit)
    not overlapped with it, whole waves from plan_splits (128-row blocks, 1 CTA per SM), W streamed
    once per group of 8 row blocks and the rows once per split."""
    from sift_ds.kernels.triton_scorer import plan_splits

    rows = ["| shape | device | GFLOP | MB read (model) | FLOP/B | ridge FLOP/B | splits x split | waves "
            "| MMA time | epilogue | predicted fraction of bf16 peak (model) |", "|" + "---|" * 11]
    for name, (n, H, V) in KERNEL_SHAPES.items():
        for dev, (peak, hbm, _) in DEVICES.items():
            sms, fp32, sfu, ghz = SM_UNITS[dev]
            flops = 2 * n * H * V
            split, splits = plan_splits(V, n, sms)
            blocks = -(-n // 128)
            waves = -(-(blocks * splits) // sms)
            groups = -(-blocks // 8)  # W is streamed once per group of 8 row blocks (GROUP_N)
            nbytes = groups * V * H * 2 + splits * n * H * 2
            logits = n * V
            t_epi = logits * EPILOGUE_FP32_OPS / (sms * fp32 * ghz * 1e9) + logits / (sms * sfu * ghz * 1e9)
            fractions, mma = [], []
            for eff in MMA_EFFICIENCY:
                t_mma = flops / (peak * 1e12 * eff) * (waves * sms) / (blocks * splits)
                t = max(t_mma + t_epi, nbytes / (hbm * 1e12))
                fractions.append(flops / t / (peak * 1e12))
                mma.append(t_mma)
            rows.append(f"| {name} | {dev} | {flops / 1e9:.0f} | {nbytes / 1e6:.0f} | {flops / nbytes:.0f} "
                        f"| {peak / hbm:.0f} | {splits} x {split} | {blocks * splits / sms:.2f} "
                        f"| {mma[1] * 1e3:.2f}–{mma[0] * 1e3:.2f} ms | {t_epi * 1e3:.2f} ms "
                        f"| {fractions[0]:.0%}–{fractions[1]:.0%} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print("Selection share of a micro-step (compute and memory; model)\n")
    print(share_table())
    print("\nGlobal-scope row exchange (BERT-base rows, 8 KiB each; model)\n")
    print(exchange_table())
    print("\nFused scorer roofline (model)\n")
    print(roofline_table())
