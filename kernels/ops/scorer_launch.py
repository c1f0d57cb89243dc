"""Launching the fused scorer's kernels (``scorer_kernels``): building them on first use (JIT-compiled
and autotuned on CUDA, interpreted under ``TRITON_INTERPRET=1`` or on CPU tensors), the autotune space
per GPU architecture, the vocabulary split plan, the launch arguments and grids, scratch buffers.
The functional API over it is ``triton_scorer``.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ..reference import check_head
from .scorer_kernels import _merge_kernel, _segment_mean_kernel, _vocab_stats_kernel

# Autotune space: (BLOCK_N, BLOCK_V, BLOCK_H, warps, stages, architectures). Every config compiles for
# sm_80 and sm_90 (tests/test_aot_compile.py, table in docs/kernels.md). Two spill on sm_80 (ptxas -v,
# flattened loop, bf16: 128 x 256 x 64 / 8 warps / 3 stages 348 B, 64 x 128 x 128 / 4 warps /
# 3 stages 16 B at the BERT-base shape), so only sm_90 and newer try them. Every BLOCK_V divides
# _SPLIT_ALIGN so vocabulary splits are whole tiles.
_CONFIG_TABLE = (
    (128, 128, 64, 8, 3, (8, 9)),
    (128, 128, 64, 8, 4, (8, 9)),
    (128, 256, 64, 8, 3, (9,)),
    (128, 128, 32, 8, 4, (8, 9)),
    (64, 256, 64, 8, 3, (8, 9)),
    (64, 128, 64, 4, 4, (8, 9)),
    (64, 128, 128, 4, 3, (9,)),
    (128, 64, 64, 4, 4, (8, 9)),
)
# The V loop is flattened with the H loop (tl.range(..., flatten=True)) so the shared-memory
# pipeline is not drained at every V tile.
_FLATTEN_V_LOOP = True


def arch_family(capability_major: int) -> int:
    """8 for Ampere / Ada (sm_80..sm_89), 9 for Hopper and newer."""
    return 8 if capability_major < 9 else 9


def cuda_configs(capability_major: int):
    """The autotune configs tried on a device of this compute capability (major)."""
    family = arch_family(capability_major)
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_V": bv, "BLOCK_H": bh, "GROUP_N": 8}, num_warps=w, num_stages=st)
        for bn, bv, bh, w, st, archs in _CONFIG_TABLE
        if family in archs
    ]


_CUDA_CONFIGS = cuda_configs(9)  # the whole space (sm_90)
_SPLIT_ALIGN = 256
# Interpreter: one small fixed configuration (CPU tests stay fast).
_INTERPRET_CONFIG = {"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_H": 16, "GROUP_N": 2}
_MERGE_BLOCK = 256
_SEGMENT_BLOCK = 128
# Only steers how many vocabulary splits the no-sync path plans for, by default (BERT masks ~15%).
_EXPECTED_LABELLED_FRACTION = 0.15
# Tests set this to fill scratch buffers with NaN, so that an unwritten element shows.
_POISON_SCRATCH = False


def _interpreting(device: torch.device) -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1" or device.type != "cuda"


@functools.lru_cache(maxsize=None)
def _kernels(interpret: bool, capability_major: int = 9):
    """(stats, merge, segment) kernels: interpreted, or JIT-compiled with the stats one autotuned
    over ``cuda_configs(capability_major)``, keyed on (H, V, a power-of-two bucket of the rows): the
    autotuner runs (and syncs) once per shape bucket, not whenever the split plan changes.

    Built on first use rather than at import, so the mode follows the call, not the import order.
    """
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        make = InterpretedFunction
    else:
        from triton.runtime.jit import JITFunction

        make = JITFunction
    stats = make(_vocab_stats_kernel)
    if not interpret:
        stats = triton.autotune(configs=cuda_configs(capability_major), key=["H", "V", "rows_bucket"])(stats)
    return stats, make(_merge_kernel), make(_segment_mean_kernel)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def rows_bucket(n_rows: int) -> int:
    """The autotune key's row count: the next power of two, at least 256."""
    return max(256, 1 << max(int(n_rows) - 1, 0).bit_length())


def plan_splits(V: int, n_rows: int, sms: int, *, block_n: int = 128, ctas_per_sm: int = 1,
                align: int = _SPLIT_ALIGN, min_split: int = 1024, overhead_cols: int = 256):
    """(split_size, num_splits) for ``n_rows`` rows on ``sms`` SMs: the split count whose grid of
    (row block, split) programs finishes soonest in a model where programs run in whole waves of
    ``sms x ctas_per_sm`` and a program costs its split's columns plus ``overhead_cols`` (prologue,
    target logits, merge). Splits are whole multiples of ``align`` columns and at least ``min_split``.
    A model (docs/kernels.md): BLOCK_N is autotuned, the plan assumes 128-row blocks."""
    row_blocks = triton.cdiv(max(n_rows, 1), block_n)
    slots = max(sms * ctas_per_sm, 1)
    best = None
    for want in range(1, max(V // min_split, 1) + 1):
        split = triton.cdiv(triton.cdiv(V, want), align) * align
        splits = triton.cdiv(V, split)
        cost = triton.cdiv(row_blocks * splits, slots) * (split + overhead_cols)
        if best is None or cost < best[0]:
            best = (cost, split, splits)
    return best[1], best[2]


def _plan_splits(V: int, n_rows_est: int, device: torch.device, num_splits: Optional[int]):
    """(split_size, num_splits): ``plan_splits`` on CUDA; one split (or as asked) when interpreting."""
    if device.type == "cuda" and not _interpreting(device) and num_splits is None:
        sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
        return plan_splits(V, n_rows_est, sms)
    align = _SPLIT_ALIGN if device.type == "cuda" and not _interpreting(device) else _INTERPRET_CONFIG["BLOCK_V"]
    num_splits = 1 if num_splits is None else num_splits
    split_size = triton.cdiv(triton.cdiv(V, max(int(num_splits), 1)), align) * align
    return split_size, triton.cdiv(V, split_size)


def _scratch(shape, device) -> torch.Tensor:
    if _POISON_SCRATCH:
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)
    return torch.empty(shape, dtype=torch.float32, device=device)


def _check_inputs(rows, weight, bias, targets=None) -> None:
    if targets is not None and tuple(targets.shape) != (rows.shape[0],):
        raise ValueError(f"targets must be [N]={rows.shape[0]}, got {tuple(targets.shape)}")
    check_head(rows, weight, bias)  # the same one-line errors as the torch backend
    for t in (weight, bias, targets):
        if t is not None and t.device != rows.device:
            raise ValueError("rows, weight, bias and targets must be on one device")


def stats_arguments(x, weight, bias, targets, part, vocab_start, split_size, n_splits, n_rows_est, *,
                    row_idx=None, count=None, interpret=False):
    """(positional args, constexpr flags) of one ``_vocab_stats_kernel`` launch, as ``_launch_stats``
    passes them; tests/test_aot_compile.py builds them from meta tensors to compile ahead of time."""
    n_rows, H, V = x.shape[0] if row_idx is None else row_idx.shape[0], x.shape[1], weight.shape[0]
    dot_dtype = torch.promote_types(x.dtype, weight.dtype)
    if interpret or dot_dtype not in (torch.bfloat16, torch.float16):
        dot_dtype = torch.float32  # the interpreter's tl.dot is wrong on native bf16 tiles
    precision = "tf32" if dot_dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    args = (
        x, x.stride(0), x.stride(1),
        x if row_idx is None else row_idx,  # placeholders are never read (constexpr switches)
        x if count is None else count,
        targets,
        weight, weight.stride(0), weight.stride(1),
        weight if bias is None else bias,
        part,
        n_rows, H, V, vocab_start, split_size, n_splits, rows_bucket(n_rows_est),
    )
    flags = dict(
        HAS_ROW_IDX=row_idx is not None, HAS_COUNT=count is not None, HAS_BIAS=bias is not None,
        DOT_DTYPE=getattr(tl, str(dot_dtype).replace("torch.", "")), DOT_PRECISION=precision,
        FLATTEN=_FLATTEN_V_LOOP,
    )
    return args, flags


def _launch_stats(x, weight, bias, targets, vocab_start, *, row_idx=None, count=None, n_rows_est=None,
                  num_splits=None) -> torch.Tensor:
    """Partial statistics ``[4, num_splits, n_rows]`` of the (compacted) rows of ``x``."""
    n_rows = x.shape[0] if row_idx is None else row_idx.shape[0]
    n_rows_est = n_rows if n_rows_est is None else n_rows_est
    interpret = _interpreting(x.device)
    split_size, n_splits = _plan_splits(weight.shape[0], n_rows_est, x.device, num_splits)
    part = _scratch((4, n_splits, n_rows), x.device)
    args, flags = stats_arguments(
        x, weight, None if bias is None else bias.contiguous(), targets.contiguous(), part, vocab_start,
        split_size, n_splits, n_rows_est, row_idx=row_idx, count=count, interpret=interpret,
    )
    stats_kernel = _stats_kernel(x.device)
    if interpret:
        cfg = _INTERPRET_CONFIG
        grid = (triton.cdiv(n_rows, cfg["BLOCK_N"]) * n_splits,)
        stats_kernel[grid](*args, **flags, **cfg)
    else:
        grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_N"]) * n_splits,)  # noqa: E731
        stats_kernel[grid](*args, **flags)
    return part


def _stats_kernel(device: torch.device):
    if _interpreting(device):
        return _kernels(True)[0]
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _kernels(False, _arch_of(index))[0]


@functools.lru_cache(maxsize=None)
def _arch_of(device_index: int) -> int:
    return arch_family(torch.cuda.get_device_capability(device_index)[0])


def last_config(device: torch.device):
    """The autotuner's choice for the last shape run on ``device`` (None when interpreting)."""
    return None if _interpreting(device) else getattr(_stats_kernel(device), "best_config", None)


def _launch_merge(part: torch.Tensor, mode: int, out: torch.Tensor, count=None) -> torch.Tensor:
    n_splits, n_rows = part.shape[1], part.shape[2]
    merge = _kernels(_interpreting(part.device))[1]
    grid = (triton.cdiv(n_rows, _MERGE_BLOCK),)
    merge[grid](part, part if count is None else count, out, n_rows, n_splits,
                HAS_COUNT=count is not None, MODE=mode, BLOCK_R=_MERGE_BLOCK)
    return out


def _launch_segment_mean(tok: torch.Tensor, bounds: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    segment = _kernels(_interpreting(tok.device))[2]
    if out.numel():
        segment[(out.numel(),)](tok, bounds, out, BLOCK=_SEGMENT_BLOCK)
    return out


def _output(out: Optional[torch.Tensor], n: int, device) -> torch.Tensor:
    if out is None:
        return torch.empty(n, dtype=torch.float32, device=device)
    if out.shape != (n,) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape ({n},)")
    return out


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
