"""Ahead-of-time compiles of the scorer kernels for sm_80 / sm_90 on a machine without a GPU.

Triton's own compiler builds each kernel for ``GPUTarget("cuda", 80 | 90, 32)`` with the arguments
specialised exactly as the runtime would (the launch arguments are built by the same code as a real
launch, ``scorer_launch.stats_arguments``, from meta tensors of the real shapes, then bound by Triton's
runtime binder). The tools in the triton wheel then report on the result:

* ``ptxas -v`` on the PTX: registers, spill stores / loads;
* ``cuobjdump -res-usage`` on the cubin: registers, static shared memory, stack;
* ``nvdisasm`` on the cubin: the SASS, searched for tensor-core MMA (``HMMA`` on sm_80, ``HGMMA``
  (wgmma) on sm_90);
* the TTGIR: whether the shared-memory pipeline drains (``async_wait {num = 0}``) inside a loop.

Used by tests/test_aot_compile.py (the CI checks) and ``python -m sift_ds.kernels.ops.aot`` (the table of
docs/kernels.md). Everything here reaches into Triton internals (``ASTSource``, ``make_backend``,
``create_function_from_signature``, ``JITFunction._pack_args``): ``compile_api_problem`` says why not,
when the installed Triton differs.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import tempfile
from typing import Dict, List, Optional

import torch


@dataclasses.dataclass(frozen=True)
class Shape:
    rows: int  # rows scored
    H: int
    V: int
    bias: bool  # the head has a bias (BERT's tied MLM decoder) or not (untied causal-LM heads)
    dtypes: tuple  # the dtypes compiled at this shape


# bert-base: 64 x 512 tokens, 15% masked, tied head with bias, bf16 and fp16. The causal-LM heads are
# untied without bias, bf16: Llama 3 (8B) at 64 sequences x 128 scored positions, Qwen2 (7B) at every
# next-token position of 8 sequences of 4,096 tokens (8 x 4,095 rows: not a multiple of 16, so the
# runtime specialises differently from the Llama 3 launch).
SHAPES = {
    "bert-base": Shape(4915, 768, 30522, True, ("bf16", "fp16")),
    "llama3": Shape(8192, 4096, 128256, False, ("bf16",)),
    "qwen2": Shape(8 * 4095, 3584, 151936, False, ("bf16",)),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# capability: (SMs of the datasheet part, max shared memory per block, per SM, registers per SM)
ARCHS = {80: ("A100", 108, 163 * 1024, 164 * 1024, 65536), 90: ("H100 SXM", 132, 227 * 1024, 228 * 1024, 65536)}
MMA = {80: "HMMA", 90: "HGMMA"}


def compile_api_problem() -> Optional[str]:
    """None if this Triton has the internals used here, else why not (tests skip with it)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource, make_backend  # noqa: F401
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
    except Exception as err:  # pragma: no cover - depends on the installed triton
        return f"triton's compile API differs ({type(err).__name__}: {err})"
    if not hasattr(JITFunction, "_pack_args"):
        return f"triton {triton.__version__}: JITFunction._pack_args is missing (runtime specialisation API differs)"
    for name in ("ptxas", "cuobjdump", "nvdisasm"):
        if not os.path.isfile(tool(name)):
            return f"{name} is not shipped in this triton wheel"
    return None


def tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def ptxas(capability: int) -> str:
    """The ptxas Triton itself uses for this target (sm_90+ PTX needs the newer one in the wheel)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(capability).path
    except Exception:  # pragma: no cover - older triton layouts
        return tool("ptxas" if capability < 90 or not os.path.isfile(tool("ptxas-blackwell")) else "ptxas-blackwell")


@dataclasses.dataclass
class Report:
    kernel: str
    config: str
    capability: int
    shape: str
    dtype: str
    registers: int
    spill_bytes: int  # spill stores + loads reported by ptxas -v
    shared_bytes: int  # dynamic (Triton's metadata) + static (cuobjdump)
    stack_bytes: int
    threads: int
    mma: int  # tensor-core MMA instructions in the SASS
    drains_in_loop: int  # async_wait {num = 0} nested in an scf.for of the TTGIR
    built_registers: int = 0  # cuobjdump -res-usage of Triton's own cubin (must equal ``registers``)
    ctas_per_sm: int = 0

    @property
    def fits_shared(self) -> bool:
        return self.shared_bytes <= ARCHS[self.capability][2]


def ctas_per_sm(capability: int, registers: int, threads: int, shared: int) -> int:
    """Occupancy from the datasheet limits: registers (allocated per warp in units of 256), shared
    memory (plus 1 KB the system reserves per CTA), 2048 threads and 32 CTAs per SM."""
    _, _, _, smem_sm, regs_sm = ARCHS[capability]
    warps = threads // 32
    regs_cta = warps * math.ceil(registers * 32 / 256) * 256
    by_regs = regs_sm // max(regs_cta, 1)
    by_smem = smem_sm // (shared + 1024)
    return max(0, min(by_regs, by_smem, 2048 // threads, 32))


def drains_in_loop(ttgir: str) -> int:
    """How many ``async_wait {num = 0}`` (pipeline fully drained) sit inside an ``scf.for``."""
    stack: List[bool] = []  # one entry per open region: is it an scf.for?
    count = 0
    for line in ttgir.splitlines():
        text = line.strip()
        if text.startswith("}"):
            if stack:
                stack.pop()
            if text.endswith("{"):  # "} else {"
                stack.append(False)
            continue
        if "async_wait" in text and "num = 0" in text and any(stack):
            count += 1
        if text.endswith("{"):
            stack.append("scf.for" in text)
    return count


def _run(args: List[str]) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout + proc.stderr


def inspect_binary(name: str, capability: int, compiled) -> Dict[str, int]:
    """ptxas -v, cuobjdump -res-usage and nvdisasm on one compiled kernel."""
    arch = f"sm_{capability}a" if capability == 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        # Triton's own ptxas flags (backends/nvidia/compiler.py, make_cubin), so that the registers
        # and spills reported are those of the cubin Triton builds (checked against cuobjdump's).
        flags = ["-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}"]
        verbose = _run([ptxas(capability), *flags, ptx, "-o", os.path.join(tmp, "v.cubin")])
        usage = _run([tool("cuobjdump"), "-res-usage", cubin])
        sass = _run([tool("nvdisasm"), cubin])
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", verbose))
    regs = int(re.search(r"Used (\d+) registers", verbose).group(1))
    fn = usage[usage.index(name):] if name in usage else usage
    static = int(re.search(r"SHARED:(\d+)", fn).group(1))
    built_regs = int(re.search(r"REG:(\d+)", fn).group(1))
    stack = int(re.search(r"STACK:(\d+)", fn).group(1))
    mma = len(re.findall(rf"\b{MMA[capability]}\b|\b{MMA[capability]}\.", sass))
    return {"registers": regs, "built_registers": built_regs, "spill_bytes": spills, "static_shared": static,
            "stack_bytes": stack, "mma": mma}


def _compile(fn, args, kwargs, capability: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def _report(name, compiled, capability, config, shape, dtype, threads) -> Report:
    info = inspect_binary(name, capability, compiled)
    shared = int(compiled.metadata.shared) + info["static_shared"]
    rep = Report(name, config, capability, shape, dtype, info["registers"], info["spill_bytes"], shared,
                 info["stack_bytes"], threads, info["mma"], drains_in_loop(compiled.asm["ttgir"]),
                 info["built_registers"])
    rep.ctas_per_sm = ctas_per_sm(capability, rep.registers, threads, shared)
    return rep


def stats_kernel_args(shape: str, dtype: str, capability: int, packed: bool = True):
    """Launch arguments of ``_vocab_stats_kernel`` at a named shape, as the runtime builds them: the
    engine's packed path (rows gathered through the sort order) or ``sequence_scores``' (compacted
    [B*S] rows with a device-side count)."""
    from . import scorer_launch as launch

    sh = SHAPES[shape]
    n, H, V = sh.rows, sh.H, sh.V
    meta = torch.device("meta")
    dt = DTYPES[dtype]
    total = n if packed else n * 100 // 15  # sequence path: every position, ~15% labelled
    x = torch.empty(total, H, dtype=dt, device=meta)
    w = torch.empty(V, H, dtype=dt, device=meta)
    b = torch.empty(V, dtype=dt, device=meta) if sh.bias else None
    targets = torch.empty(total, dtype=torch.int64, device=meta)
    row_idx = torch.empty(total, dtype=torch.int64, device=meta)
    count = None if packed else torch.empty(1, dtype=torch.int64, device=meta)
    split, splits = launch.plan_splits(V, n, ARCHS[capability][1])
    part = torch.empty(4, splits, total, dtype=torch.float32, device=meta)
    return launch.stats_arguments(x, w, b, targets, part, 0, split, splits, n, row_idx=row_idx, count=count)


def compile_stats(config, capability: int, shape: str, dtype: str, packed: bool = True,
                  flatten: Optional[bool] = None) -> Report:
    """One ``_vocab_stats_kernel`` compile; ``flatten=False`` builds the un-flattened V loop (a control)."""
    from triton.runtime.jit import JITFunction

    from .scorer_kernels import _vocab_stats_kernel

    args, flags = stats_kernel_args(shape, dtype, capability, packed)
    if flatten is not None:
        flags["FLATTEN"] = flatten
    kwargs = dict(flags, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    compiled = _compile(JITFunction(_vocab_stats_kernel), args, kwargs, capability)
    label = "{BLOCK_N}x{BLOCK_V}x{BLOCK_H}".format(**config.kwargs) + f" w{config.num_warps} s{config.num_stages}"
    if flatten is False:
        label += " unflattened"
    return _report("_vocab_stats_kernel", compiled, capability, label, shape, dtype, 32 * config.num_warps)


def compile_small_kernels(capability: int) -> List[Report]:
    """The merge, segment-mean and top-k kernels (one configuration each), at the BERT-base shape."""
    from triton.runtime.jit import JITFunction

    from . import scorer_kernels as sk
    from . import scorer_launch as launch
    from . import triton_topk as tk

    meta = torch.device("meta")
    n = SHAPES["bert-base"].rows
    f32 = lambda *s: torch.empty(*s, dtype=torch.float32, device=meta)  # noqa: E731
    i64 = lambda *s: torch.empty(*s, dtype=torch.int64, device=meta)  # noqa: E731
    jobs = [
        ("_merge_kernel", sk._merge_kernel, (f32(4, 12, n), i64(1), f32(n), n, 12),
         dict(HAS_COUNT=False, MODE=1, BLOCK_R=launch._MERGE_BLOCK)),
        ("_segment_mean_kernel", sk._segment_mean_kernel, (f32(n), i64(65), f32(64)),
         dict(BLOCK=launch._SEGMENT_BLOCK)),
        ("_topk_rank_kernel", tk._topk_rank_kernel, (f32(128), i64(64), 128, 64),
         dict(BLOCK_I=tk._BLOCK_I, BLOCK_J=tk._BLOCK_J)),
    ]
    out = []
    for name, fn, args, kwargs in jobs:
        compiled = _compile(JITFunction(fn), args, dict(kwargs, num_warps=4, num_stages=3), capability)
        out.append(_report(name, compiled, capability, f"{name} (w4)", "bert-base", "fp32", 128))
    return out


def all_stats_jobs(full: bool = True):
    """(config, capability, shape, dtype) of every autotune config the runtime may try on each target,
    at every shape; ``full=False`` compiles bf16 only (CI: fp16 differs from bf16 only in the dtype)."""
    from .scorer_launch import cuda_configs

    return [(cfg, cap, shape, dtype) for cap in ARCHS for cfg in cuda_configs(cap // 10)
            for shape, sh in SHAPES.items() for dtype in sh.dtypes if full or dtype == "bf16"]


def control_jobs():
    """Compiles that must fail the checks: the configs kept off sm_80 (they spill there), and the first
    sm_80 config with an un-flattened V loop (it drains the pipeline at every V tile)."""
    from .scorer_launch import cuda_configs

    excluded = [c for c in cuda_configs(9) if c not in cuda_configs(8)]
    return [(c, 80, "bert-base", "bf16") for c in excluded] + [(cuda_configs(8)[0], 80, "bert-base", "bf16", True, False)]


def _job(job):
    return compile_stats(*job)


def run_all(processes: int = 2, full: bool = True, jobs=None) -> List[Report]:
    """Every stats-kernel job (or ``jobs``), compiled in ``processes`` worker processes (compiles are
    CPU-bound), reports in the order of the jobs."""
    import concurrent.futures
    import multiprocessing

    jobs = all_stats_jobs(full) if jobs is None else jobs
    if processes <= 1:
        return [_job(j) for j in jobs]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        return list(pool.map(_job, jobs))


def markdown_table(reports: List[Report]) -> str:
    rows = ["| target | config (N×V×H, warps, stages) | shape | dtype | registers | spills (B) | shared (KB) "
            "| CTAs/SM | MMA in SASS | pipeline drains in a loop |", "|" + "---|" * 10]
    for r in reports:
        rows.append(f"| sm_{r.capability} | {r.config} | {r.shape} | {r.dtype} | {r.registers} | {r.spill_bytes} "
                    f"| {r.shared_bytes / 1024:.1f} | {r.ctas_per_sm} | {r.mma} {MMA[r.capability]} | {r.drains_in_loop} |")
    return "\n".join(rows)


def condensed_table(reports: List[Report]) -> str:
    """One row per (target, config): registers per shape / dtype, and the worst case of the rest."""
    cols = [(shape, dtype) for shape, sh in SHAPES.items() for dtype in sh.dtypes]
    head = " / ".join(f"{s} {d}" for s, d in cols)
    rows = [f"| target | config (N×V×H, warps, stages) | registers ({head}) | shared (KB) | CTAs/SM "
            "| spills (B) | MMA in SASS | drains in a loop |", "|" + "---|" * 8]
    groups: Dict[tuple, Dict[tuple, Report]] = {}
    for r in reports:
        groups.setdefault((r.capability, r.config), {})[(r.shape, r.dtype)] = r
    for (cap, config), by in groups.items():
        rs = list(by.values())
        if any(c in by for c in cols):
            regs = " / ".join(str(by[c].registers) if c in by else "—" for c in cols)
        else:  # the small kernels: one compile, at their own shape and dtype
            regs = " / ".join(str(r.registers) for r in rs)
        shared = sorted({f"{r.shared_bytes / 1024:.1f}" for r in rs})
        rows.append(f"| sm_{cap} | {config} | {regs} | {', '.join(shared)} | {min(r.ctas_per_sm for r in rs)} "
                    f"| {max(r.spill_bytes for r in rs)} | {min(r.mma for r in rs)} {MMA[cap]} "
                    f"| {max(r.drains_in_loop for r in rs)} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m sift_ds.kernels.ops.aot [--full]  -> the table of docs/kernels.md
    import sys

    problem = compile_api_problem()
    if problem:
        raise SystemExit(problem)
    reports = run_all()
    reports += [r for cap in ARCHS for r in compile_small_kernels(cap)]
    print(markdown_table(reports) if "--full" in sys.argv else condensed_table(reports))
