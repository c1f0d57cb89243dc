#!/usr/bin/env python3
"""The GPU check's measurements (benchmarks/gpu_check.py runs them, each phase in its own process):

    python benchmarks/gpu_check_phases.py {scorer,step} --result FILE --budget SECONDS [--dry] [--fused-adam]

``scorer``: the fused Triton scorer against bf16 eager PyTorch, ``torch.compile``, Liger-Kernel and
Cut Cross-Entropy, every output checked against the fp32 reference before its time counts. ``step``:
one DeepSpeed engine stepped vanilla and with SIFT (fused and torch scorer). A phase writes its
results to ``--result`` after every item, so that a phase killed at its budget keeps what it measured.
The figures and their meaning: gpu_check.py's docstring and docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from gpu_check import read_json, write_json

# Seconds a scorer item needs left in the phase's budget to start (torch.compile's compilation is slow).
MIN_LEFT = {"bf16-compile": 40}
# Score tolerance against the fp32 reference (max |difference| over sequences): fp32 accumulation
# (Triton), logits rounded to bf16 (eager bf16, compile, Liger, CCE: |z| / 256 per logit).
TOL = {"triton": 2e-3, "bf16-eager": 5e-2, "bf16-compile": 5e-2, "liger": 5e-2, "cce": 5e-2}


class Phase:
    """A phase's results, written after every item so that a killed phase keeps what it measured."""

    def __init__(self, path, budget, reserve):
        self.path, self.start, self.budget, self.reserve = path, time.monotonic(), budget, reserve
        self.data = {}
        self.save()

    def left(self):
        return self.budget - self.reserve - (time.monotonic() - self.start)

    def save(self):
        write_json(self.path, self.data)


def timer(cuda):
    """Median milliseconds of a no-argument callable: ``triton.testing.do_bench`` on CUDA (events,
    L2 flushed between calls), one host-timed call on the CPU (the dry run's figures mean nothing)."""
    if cuda:
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    def host(fn, reps=1):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 1e3 * sorted(times)[len(times) // 2]

    return host


def score_error(out, want):
    """Max |out - want| over the finite reference scores; inf when the set of finite scores differs."""
    import torch

    if out.shape != want.shape or not torch.equal(torch.isfinite(out), torch.isfinite(want)):
        return float("inf")
    finite = torch.isfinite(want)
    return (out[finite].double() - want[finite].double()).abs().max().item() if finite.any() else 0.0


def phase_scorer(args):
    import torch

    import bench_scorer as bs
    from sift_ds.kernels.reference import packed_sequence_scores_torch

    cuda = torch.cuda.is_available() and not args.dry
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    bench = timer(cuda)
    shapes = ({"bert-base": (64, 512, 0.15, 768, 30522), "large-vocab": (16, 512, 1.0, 4096, 128256)} if cuda
              else {"tiny": (4, 32, 0.25, 48, 300)})
    phase = Phase(args.result, args.budget, reserve=10)
    d = phase.data
    import triton

    import sift_ds

    d["env"] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                "triton": triton.__version__, "sift_ds": os.path.dirname(sift_ds.__file__), "capability": list(torch.cuda.get_device_capability()) if cuda else None}
    d.update(rows=[], dtype=str(dtype))
    d["datasheet_tflops"] = bs.datasheet_peak(d["env"]["device"]) if cuda else None

    # The bf16 matmul peak of this device, now: an 8192^3 product on random data.
    n = 8192 if cuda else 256
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    d["peak_tflops"] = float(f"{2 * n**3 / bench(lambda: a @ b) / 1e9:.4g}")
    d["peak_of"] = f"{str(dtype).replace('torch.', '')} {n}^3 matmul"
    del a, b
    phase.save()

    inputs, refs = {}, {}

    def shape_inputs(shape):
        if shape not in inputs:
            inputs[shape] = bs.build_inputs(*shapes[shape], device=device, dtype=dtype)
        return inputs[shape]

    def reference(shape, criterion, bias=True):
        """The fp32 reference twin's scores, checked against float64 math first."""
        key = (shape, criterion, bias)
        if key not in refs:
            x = shape_inputs(shape)
            ref = packed_sequence_scores_torch(x["rows"], x["w"], x["b"] if bias else None, x["targets"], x["seq"],
                                               x["num_seqs"], criterion)
            err = score_error(ref, bs.float64_scores(x, criterion, bias))
            if not err <= 2e-4:
                raise AssertionError(f"the fp32 reference is {err:.3g} off float64 math ({shape}, {criterion})")
            refs[key] = ref
        return refs[key]

    def make(impl, criterion, x):
        args6 = (x["rows"], x["w"], x["b"], x["targets"], x["seq"], x["num_seqs"])
        if impl == "matmul":
            return lambda: x["rows"] @ x["w"].T
        if impl == "triton":
            from sift_ds.kernels.ops.triton_scorer import packed_sequence_scores_triton

            return lambda: packed_sequence_scores_triton(*args6, criterion)
        if impl == "bf16-eager":
            return lambda: bs.bf16_eager_scores(*args6, criterion)
        if impl == "bf16-compile":
            compiled = torch.compile(bs.bf16_eager_scores, backend="inductor" if cuda else "eager")
            return lambda: compiled(*args6, criterion)
        if impl == "liger":
            import liger_kernel  # noqa: F401

            return lambda: bs.liger_scores(*args6)
        import cut_cross_entropy  # noqa: F401

        return lambda: bs.cce_scores(x["rows"], x["w"], x["targets"], x["seq"], x["num_seqs"])

    items = []
    for shape in shapes:  # first everything but torch.compile, both shapes
        items += [(shape, "matmul", None), (shape, "triton", "loss"), (shape, "triton", "entropy"),
                  (shape, "bf16-eager", "loss"), (shape, "bf16-eager", "entropy"), (shape, "liger", "loss"),
                  (shape, "cce", "loss")]
    for shape in shapes:  # compiling is slow: last, so that a short budget drops it first
        items += [(shape, "bf16-compile", "loss"), (shape, "bf16-compile", "entropy")]

    for shape, impl, crit in items:
        row = {"shape": shape, "impl": impl, "criterion": crit}
        d["rows"].append(row)
        if phase.left() <= MIN_LEFT.get(impl, 0):
            row["status"] = "skipped: out of time"
            phase.save()
            continue
        if impl in ("liger", "cce") and not cuda:
            row["status"] = "skipped: needs CUDA"
            phase.save()
            continue
        x = shape_inputs(shape)
        try:
            fn = make(impl, crit, x)
        except ImportError as err:
            row["status"] = f"skipped: {err}"
            phase.save()
            continue
        try:
            with torch.no_grad():
                out = fn()  # compile / autotune outside the timing and the memory peak
                if impl != "matmul":
                    err = score_error(out, reference(shape, crit, bias=impl != "cce"))
                    row.update(max_abs_err=err, check="ok" if err <= TOL[impl] else f"FAIL (> {TOL[impl]})")
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fn()
                    torch.cuda.synchronize()
                    row["extra_mem_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
                ms = bench(fn)
        except Exception as err:  # recorded; the next item still runs
            row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            phase.save()
            continue
        nrows, h = x["rows"].shape
        v = x["w"].shape[0]
        tflops = 2 * nrows * h * v / ms / 1e9
        row.update(rows=nrows, H=h, V=v, ms=round(ms, 4), tflops=float(f"{tflops:.4g}"),
                   fraction_of_peak=round(tflops / d["peak_tflops"], 3))
        if d["datasheet_tflops"]:
            row["fraction_of_datasheet"] = round(tflops / d["datasheet_tflops"], 3)
        if impl == "triton":
            from sift_ds.kernels.ops.scorer_launch import last_config

            cfg = last_config(device)
            row["config"] = None if cfg is None else str(cfg)
        phase.save()


def phase_step(args):
    # DeepSpeed on one process without its launcher: the torch.distributed variables, set here
    # (without them DeepSpeed may try MPI discovery, mpi4py being installed).
    from sift_ds.ports import free_port

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    import torch

    import sift_ds
    from sift_ds.pretrain.models import build_bert

    cuda = torch.cuda.is_available() and not args.dry
    phase = Phase(args.result, args.budget, reserve=5)
    d = phase.data
    preset, vocab, seq, micro, exit_layer = ("base", 30522, 512, 32, 1) if cuda else ("tiny", 300, 32, 2, 1)
    reps, warm = (10, 3) if cuda else (1, 1)
    optimizer = "DeepSpeed FusedAdam" if args.fused_adam else "torch AdamW (DeepSpeed's torch_adam)"
    d["setup"] = (f"BERT-{preset} (sparse MLM head), seq {seq}, gross {2 * micro} -> {micro}, exit layer {exit_layer}, "
                  f"loss, {'bf16' if cuda else 'fp32'}, ZeRO-2, {optimizer}, median of {reps} steps")
    d["arms"] = {}
    phase.save()

    torch.manual_seed(0)
    model = build_bert(preset, vocab_size=vocab, max_position_embeddings=max(seq, 512), sparse_head=True)
    params = {"lr": 1e-4, "weight_decay": 0.01}
    if not args.fused_adam:
        params["torch_adam"] = True
    cfg = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
           "optimizer": {"type": "AdamW", "params": params}, "zero_optimization": {"stage": 2},
           "gradient_clipping": 1.0, "steps_per_print": 10**9}
    if cuda:
        cfg["bf16"] = {"enabled": True}
    sift_cfg = sift_ds.SiftConfig(exit_layer=exit_layer, keep_ratio=0.5, scope="local", kernel="triton",
                                  selection_start_step=0, start_after_lr_peak=True)  # a constant lr: step 0 selects
    fused = sift_ds.initialize(model=model, config=cfg, sift_config=sift_cfg)[0]
    # The same DeepSpeed engine behind three SIFT settings: one model, one optimizer.
    arms = {
        "vanilla": sift_ds.SiftEngine(fused.engine, fused.adapter, sift_ds.SiftConfig(enabled=False)),
        "sift-fused": fused,
        "sift-torch": sift_ds.SiftEngine(fused.engine, fused.adapter, sift_ds.SiftConfig(
            exit_layer=exit_layer, keep_ratio=0.5, scope="local", kernel="torch", selection_start_step=0)),
    }
    g = torch.Generator().manual_seed(0)

    def batch(rows):  # on the host, as a data loader gives it (the engine moves it)
        ids = torch.randint(5, vocab, (rows, seq), generator=g)
        labels = torch.where(torch.rand(rows, seq, generator=g) < 0.15, ids, torch.full_like(ids, -100))
        inputs = torch.where(labels != -100, torch.full_like(ids, 4), ids)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                "labels": labels}

    # The two scorers must agree on the same gross batch before their times mean anything.
    probe = batch(2 * micro)
    a, b = arms["sift-fused"].select(probe).scores, arms["sift-torch"].select(probe).scores
    err = score_error(a.cpu(), b.cpu())
    d["score_check"] = f"max |difference| {err:.2e}, " + ("ok" if err <= 1e-2 else "FAIL (> 1e-2)")
    phase.save()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    timed = dict(phase=phase, batch=batch, sync=sync, warm=warm, reps=reps, micro=micro, seq=seq)
    for name, arm in arms.items():
        time_arm(name, arm, **timed)
    # torch.compile (sift_ds.compiling): a second model with the padded masked-positions-only head,
    # DeepSpeed's engine.compile and the compiled prefix forward, vanilla and SIFT (fused scorer)
    backend = "inductor" if cuda else "eager"
    d["compile"] = f"backend {backend}; graphs and graph breaks counted after the warm-up steps"
    for name, arm in compiled_arms(preset, vocab, seq, cfg, sift_cfg, backend).items():
        time_arm(name, arm, **timed)


def time_arm(name, arm, phase, batch, sync, warm, reps, micro, seq):
    """Step ``arm`` ``warm + reps`` times; its medians into ``phase.data["arms"][name]``."""
    import torch
    from torch._dynamo.utils import counters

    d = phase.data
    rec = d["arms"][name] = {}
    if phase.left() <= 0:
        rec["status"] = "skipped: out of time"
        phase.save()
        return
    batches = [batch(arm.gross_batch_size) for _ in range(warm + reps)]
    steps, selects, shares = [], [], []
    for i, gross in enumerate(batches):
        if i == warm:
            compiled = (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()))
        sync()
        t = time.perf_counter()
        loss = arm.train_step(gross)
        sync()
        seconds = time.perf_counter() - t
        stats = arm.read_stats()  # this step alone: a window of one train_step
        if not torch.isfinite(loss):
            raise AssertionError(f"{name}: non-finite loss at step {i}")
        if i < warm:
            rec["warm_up_s"] = round(rec.get("warm_up_s", 0.0) + seconds, 2)
        else:
            steps.append(seconds)
            selects.append(stats["sift/selection_time_s"])
            shares.append(stats["sift/selection_share"])
    step_s = sorted(steps)[len(steps) // 2]
    rec.update(step_ms=round(1e3 * step_s, 2), select_ms=round(1e3 * sorted(selects)[len(selects) // 2], 2),
               selection_share=round(sorted(shares)[len(shares) // 2], 4) if arm.sift_config.enabled else None,
               gross=arm.gross_batch_size, trained_rows=micro,
               trained_tokens_per_s=round(micro * seq / step_s, 1),
               scored_tokens_per_s=round(arm.gross_batch_size * seq / step_s, 1))
    if name.endswith("-compiled"):
        rec["after_warm_up"] = {"graphs": counters["stats"]["unique_graphs"] - compiled[0],
                                "graph_breaks": sum(counters["graph_break"].values()) - compiled[1]}
    if "vanilla" in d["arms"] and "trained_tokens_per_s" in d["arms"]["vanilla"]:
        rec["tokens_per_s_vs_vanilla"] = round(rec["trained_tokens_per_s"] / d["arms"]["vanilla"]["trained_tokens_per_s"], 3)
    phase.save()


def compiled_arms(preset, vocab, seq, cfg, sift_cfg, backend):
    """A second engine (the padded head, ``sift_ds.compiling.compile_engine``) behind vanilla and SIFT."""
    import torch

    import sift_ds
    from sift_ds.compiling import compile_engine
    from sift_ds.pretrain.models import build_bert

    torch.manual_seed(0)
    model = build_bert(preset, vocab_size=vocab, max_position_embeddings=max(seq, 512), sparse_head=True,
                       masked_share=0.15)
    sift = compile_engine(sift_ds.initialize(model=model, config=cfg, sift_config=sift_cfg)[0], backend)
    return {"vanilla-compiled": sift_ds.SiftEngine(sift.engine, sift.adapter, sift_ds.SiftConfig(enabled=False)),
            "sift-compiled": sift}


PHASES = {"scorer": phase_scorer, "step": phase_step}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=sorted(PHASES))
    p.add_argument("--result", required=True, help="the phase's JSON, written after every item")
    p.add_argument("--budget", type=float, default=60, help="seconds the phase may run")
    p.add_argument("--dry", action="store_true", help="on the CPU at tiny shapes (the figures mean nothing)")
    p.add_argument("--fused-adam", action="store_true", help="the step phase with DeepSpeed's FusedAdam")
    args = p.parse_args(argv)
    try:
        PHASES[args.phase](args)
    except Exception as err:
        data = read_json(args.result)
        data["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        write_json(args.result, data)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
