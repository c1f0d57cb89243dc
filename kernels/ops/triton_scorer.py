"""Fused Triton early-exit scorer: CE / entropy through a vocab head without N x V logits.

The math is the one of ``reference.py``; only the schedule differs. For rows ``x`` [N, H], the
vocabulary head ``W`` [V, H] (BERT's tied decoder, or a causal LM's untied head) and bias ``b`` [V]
(or none), the logits ``z = x W^T + b`` are produced one
[BLOCK_N, BLOCK_V] tile at a time by ``tl.dot`` (fp32 accumulation, loop over H) and folded at
once into online-softmax statistics per row, so that no N x V buffer ever exists:

    m = max z,   s = sum exp(z - m),   q = sum (z - m) exp(z - m),   z_t = z[target]

CE = m + log s - z_t and entropy = log s - q / s both come out of the same pass.

Three kernels, launched back to back without a host synchronisation:

1. ``_vocab_stats_kernel`` -- grid = (row blocks) x (vocabulary splits), in grouped order so that
   the programs running together share the same W columns (W stays in L2). Each program streams
   its split of the vocabulary and writes partial statistics ``part[4, num_splits, N]``.
2. ``_merge_kernel`` -- merges the splits of each row in a fixed order (deterministic; no
   atomics) and writes either the merged statistics or the finished per-row CE / entropy.
3. ``_segment_mean_kernel`` -- one program per sequence: mean of its (contiguous) rows' scores,
   ``-inf`` for a sequence with none.

``sequence_scores_triton`` compacts the labelled positions on the device (a stable partition by
cumsum + scatter, the count stays a device tensor): row blocks past the count return at once, so
only the ~15% labelled rows cost vocabulary work and nothing waits on the host.

Interpreter (``TRITON_INTERPRET=1``, CPU tensors): the kernels are built as interpreted functions
at call time (so the environment variable may be set after this module is imported), run with one
small fixed configuration, and cast the loaded tiles to fp32 before ``tl.dot`` (``DOT_DTYPE``):
triton 3.9's interpreter multiplies bf16 tiles as their raw uint16 bits.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ..reference import IGNORE_INDEX, VocabStats, check_criterion, check_head

# ----------------------------------------------------------------------------------------------
# Kernels (plain functions; made into JIT or interpreted kernels by ``_kernels``)
# ----------------------------------------------------------------------------------------------

# The kernels use builtins only, plus ``tl.reduce`` with the standard library's combine functions
# in place of ``tl.sum`` / ``tl.max`` (and no ``tl.cdiv`` / ``tl.zeros``): those are themselves
# @jit functions, decorated once in whichever mode triton was first imported in, whereas the
# interpreter maps the combine functions to numpy by identity. So an interpreted run works even
# when something (torch._dynamo, transformers) imported triton before TRITON_INTERPRET was set.

_MODE_STATS, _MODE_LOSS, _MODE_ENTROPY = 0, 1, 2
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
_MODES = {"loss": _MODE_LOSS, "entropy": _MODE_ENTROPY}


def _vocab_stats_kernel(
    x_ptr, stride_xn, stride_xh,  # rows (gathered through row_idx when HAS_ROW_IDX)
    row_idx_ptr,  # [n_rows] source row of each compacted row
    count_ptr,  # [1] number of valid compacted rows (HAS_COUNT), else all n_rows are valid
    tgt_ptr,  # vocab ids, indexed by *source* row
    w_ptr, stride_wv, stride_wh,
    b_ptr,
    part_ptr,  # float32 [4, num_splits, n_rows]: m, s, q, z_t
    n_rows, H, V, vocab_start, split_size, num_splits,
    rows_bucket,  # unused by the code: the autotune key's row-count bucket
    HAS_ROW_IDX: tl.constexpr, HAS_COUNT: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr, FLATTEN: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
):
    # Grouped order: GROUP_N row blocks x all splits per group, row block fastest, so that the
    # programs in flight read the same W tiles at about the same time (L2 reuse), and the inactive
    # row blocks of the no-sync path (past the count) are the last ones launched.
    pid = tl.program_id(0)
    num_row_blocks = (n_rows + BLOCK_N - 1) // BLOCK_N
    per_group = GROUP_N * num_splits
    first_block = (pid // per_group) * GROUP_N
    group_rows = tl.minimum(num_row_blocks - first_block, GROUP_N)
    row_block = first_block + (pid % per_group) % group_rows
    split = (pid % per_group) // group_rows

    if HAS_COUNT:
        n_valid = tl.load(count_ptr).to(tl.int32)
    else:
        n_valid = n_rows
    row_start = row_block * BLOCK_N
    if row_start >= n_valid:  # unlabelled tail of a compacted batch: no vocabulary work
        return

    offs_n = row_start + tl.arange(0, BLOCK_N)
    row_mask = offs_n < n_valid
    if HAS_ROW_IDX:
        src = tl.load(row_idx_ptr + offs_n, mask=row_mask, other=0).to(tl.int64)
    else:
        src = offs_n.to(tl.int64)
    x_rows = x_ptr + src[:, None] * stride_xn  # [BLOCK_N, 1]
    offs_h = tl.arange(0, BLOCK_H)

    v_lo = split * split_size
    v_hi = tl.minimum(v_lo + split_size, V)

    # Statistics in base 2: logits pre-scaled by log2(e) (bias folded into the same FMA), so each
    # logit costs one exp2 and no extra multiply; m and q are converted back to natural units at
    # the end (z - m = (z2 - m2) / log2(e)). m2 = running max, s = sum 2^(z2 - m2),
    # q2 = sum (z2 - m2) 2^(z2 - m2).
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.full([BLOCK_N], 0.0, tl.float32)
    q = tl.full([BLOCK_N], 0.0, tl.float32)
    # One flattened loop nest (V tiles x H steps): the shared-memory pipeline runs across V tiles
    # instead of being set up and drained at each one.
    for v0 in tl.range(v_lo, v_hi, BLOCK_V, flatten=FLATTEN):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        col_mask = offs_v < v_hi
        w_cols = w_ptr + offs_v.to(tl.int64)[None, :] * stride_wv  # [1, BLOCK_V]
        acc = tl.full([BLOCK_N, BLOCK_V], 0.0, tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hh = h0 + offs_h
            h_mask = hh < H
            x = tl.load(x_rows + hh[None, :] * stride_xh, mask=row_mask[:, None] & h_mask[None, :], other=0.0)
            w = tl.load(w_cols + hh[:, None] * stride_wh, mask=h_mask[:, None] & col_mask[None, :], other=0.0)
            acc = tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
        # Bias and column mask folded into one [BLOCK_V] vector: columns past the split get a
        # huge finite negative logit, so exp2() is 0 and (z - m) * 2^(z - m) is 0 (no inf * 0).
        if HAS_BIAS:
            col_add = tl.load(b_ptr + offs_v, mask=col_mask, other=0.0).to(tl.float32) * LOG2E
        else:
            col_add = tl.full([BLOCK_V], 0.0, tl.float32)
        z = acc * LOG2E + tl.where(col_mask, col_add, -1.0e30)[None, :]
        # Online update. With m_old the running max and m_new the new one:
        #   s <- 2^{m_old - m_new} s + sum 2^{z - m_new}
        #   q <- 2^{m_old - m_new} (q + (m_old - m_new) s) + sum (z - m_new) 2^{z - m_new}
        m_new = tl.maximum(m, tl.reduce(z, 1, tl.standard._elementwise_max))
        d = z - m_new[:, None]
        p = tl.exp2(d)
        alpha = tl.exp2(m - m_new)  # 0 on the first tile (m = -inf)
        shift = tl.where(s > 0.0, m - m_new, 0.0)  # m = -inf, s = 0 on the first tile: no inf * 0
        q = alpha * (q + shift * s) + tl.reduce(d * p, 1, tl.standard._sum_combine)
        s = alpha * s + tl.reduce(p, 1, tl.standard._sum_combine)
        m = m_new
    m = m * LN2  # back to natural units: m = m2 ln 2, q = q2 ln 2
    q = q * LN2

    # Target logit: one gathered dot product per row whose target lies in this split (rows of
    # other splits, ignored labels and -- for a tensor-parallel shard -- other shards load nothing),
    # and no loop at all in a program where no row's target falls in its split.
    tgt = tl.load(tgt_ptr + src, mask=row_mask, other=-1).to(tl.int64) - vocab_start
    has_tgt = row_mask & (tgt >= v_lo) & (tgt < v_hi)
    zt = tl.full([BLOCK_N], 0.0, tl.float32)
    if tl.reduce(has_tgt.to(tl.int32), 0, tl.standard._sum_combine) > 0:
        w_tgt = w_ptr + tl.where(has_tgt, tgt, 0)[:, None] * stride_wv
        for h0 in range(0, H, BLOCK_H):
            hh = h0 + offs_h
            mask2 = has_tgt[:, None] & (hh < H)[None, :]
            x = tl.load(x_rows + hh[None, :] * stride_xh, mask=mask2, other=0.0)
            w = tl.load(w_tgt + hh[None, :] * stride_wh, mask=mask2, other=0.0)
            zt += tl.reduce(x.to(tl.float32) * w.to(tl.float32), 1, tl.standard._sum_combine)
        if HAS_BIAS:
            zt += tl.load(b_ptr + tl.where(has_tgt, tgt, 0), mask=has_tgt, other=0.0).to(tl.float32)

    out = part_ptr + split * n_rows + offs_n
    plane = num_splits * n_rows
    tl.store(out, m, mask=row_mask)
    tl.store(out + plane, s, mask=row_mask)
    tl.store(out + 2 * plane, q, mask=row_mask)
    tl.store(out + 3 * plane, zt, mask=row_mask)


def _merge_kernel(
    part_ptr,  # float32 [4, num_splits, n_rows]
    count_ptr,
    out_ptr,  # MODE 0: float32 [4, n_rows] merged stats; else float32 [n_rows] scores
    n_rows, num_splits,
    HAS_COUNT: tl.constexpr, MODE: tl.constexpr, BLOCK_R: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if HAS_COUNT:
        n_valid = tl.load(count_ptr).to(tl.int32)
    else:
        n_valid = n_rows
    mask = offs < n_valid
    plane = num_splits * n_rows
    # Two passes in split order (deterministic): global max, then the rescaled sums.
    m = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for i in range(1, num_splits):
        m = tl.maximum(m, tl.load(part_ptr + i * n_rows + offs, mask=mask, other=0.0))
    s = tl.full([BLOCK_R], 0.0, tl.float32)
    q = tl.full([BLOCK_R], 0.0, tl.float32)
    zt = tl.full([BLOCK_R], 0.0, tl.float32)
    for i in range(0, num_splits):
        ptr = part_ptr + i * n_rows + offs
        mi = tl.load(ptr, mask=mask, other=0.0)
        si = tl.load(ptr + plane, mask=mask, other=1.0)  # 1: no log(0) on masked lanes
        qi = tl.load(ptr + 2 * plane, mask=mask, other=0.0)
        scale = tl.exp(mi - m)
        s += scale * si
        q += scale * (qi + (mi - m) * si)
        zt += tl.load(ptr + 3 * plane, mask=mask, other=0.0)
    if MODE == 0:
        tl.store(out_ptr + offs, m, mask=mask)
        tl.store(out_ptr + n_rows + offs, s, mask=mask)
        tl.store(out_ptr + 2 * n_rows + offs, q, mask=mask)
        tl.store(out_ptr + 3 * n_rows + offs, zt, mask=mask)
    elif MODE == 1:  # CE and entropy are >= 0; rounding must not make them negative (V = 1: -1e-7)
        tl.store(out_ptr + offs, tl.maximum(m + tl.log(s) - zt, 0.0), mask=mask)
    else:
        tl.store(out_ptr + offs, tl.maximum(tl.log(s) - q / s, 0.0), mask=mask)


def _segment_mean_kernel(
    tok_ptr,  # float32 scores, the rows of each sequence contiguous
    bounds_ptr,  # int64 [num_seqs + 1]: rows of sequence i are [bounds[i], bounds[i + 1])
    out_ptr,  # float32 [num_seqs]
    BLOCK: tl.constexpr,
):
    seq = tl.program_id(0)
    lo = tl.load(bounds_ptr + seq)
    hi = tl.load(bounds_ptr + seq + 1)
    acc = tl.full([BLOCK], 0.0, tl.float32)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(tok_ptr + offs, mask=offs < hi, other=0.0)
    n = (hi - lo).to(tl.float32)
    mean = tl.where(n > 0, tl.reduce(acc, 0, tl.standard._sum_combine) / tl.maximum(n, 1.0), float("-inf"))
    tl.store(out_ptr + seq, mean)


# ----------------------------------------------------------------------------------------------
# Kernel construction and launch configuration
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Functional API
# ----------------------------------------------------------------------------------------------


def vocab_partial_stats_triton(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    vocab_start: int = 0,
    *,
    num_splits: Optional[int] = None,
) -> VocabStats:
    """Fused twin of ``reference.vocab_partial_stats``: statistics of ``rows @ weight.T + bias``
    over the vocabulary slice ``weight`` [V_s, H] whose first row has the global id ``vocab_start``.

    For a Megatron-style vocab-parallel head, each rank calls this on its shard, merges the
    statistics with ``api.merge_vocab_stats_across`` and finishes with ``finish_token_scores``.
    """
    _check_inputs(rows, weight, bias, targets)
    n = rows.shape[0]
    merged = torch.empty((4, n), dtype=torch.float32, device=rows.device)
    if n:
        with _device_guard(rows.device):
            part = _launch_stats(rows, weight, bias, targets, int(vocab_start), num_splits=num_splits)
            _launch_merge(part, _MODE_STATS, merged)
    return VocabStats(*merged.unbind(0))


def _token_scores(rows, weight, bias, targets, criterion="loss", *, out=None, num_splits=None):
    check_criterion(criterion)
    _check_inputs(rows, weight, bias, targets)
    out = _output(out, rows.shape[0], rows.device)
    if rows.shape[0]:
        with _device_guard(rows.device):
            part = _launch_stats(rows, weight, bias, targets, 0, num_splits=num_splits)
            _launch_merge(part, _MODES[criterion], out)
    return out


def token_scores_triton(rows, weight, bias, targets, criterion: str = "loss") -> torch.Tensor:
    """Per-row CE or entropy [N] (float32) through the vocab head; fused twin of
    ``reference.token_scores_torch``."""
    return _token_scores(rows, weight, bias, targets, criterion)


def _packed_scores(rows, weight, bias, targets, seq_index, num_seqs, criterion="loss", *, out=None,
                   num_splits=None):
    check_criterion(criterion)
    _check_inputs(rows, weight, bias, targets)
    if tuple(seq_index.shape) != (rows.shape[0],):
        raise ValueError(f"seq_index must be [N]={rows.shape[0]}, got {tuple(seq_index.shape)}")
    n, device = rows.shape[0], rows.device
    out = _output(out, num_seqs, device)
    if n == 0:
        return out.fill_(float("-inf"))
    # Rows grouped by sequence (stable sort on the device); the kernel gathers them in that order,
    # and sequence i owns the sorted rows [bounds[i], bounds[i + 1]).
    seq_index = seq_index.to(device=device, dtype=torch.int64)
    order = torch.argsort(seq_index, stable=True)
    bounds = torch.searchsorted(seq_index[order], torch.arange(num_seqs + 1, device=device))
    with _device_guard(device):
        part = _launch_stats(rows, weight, bias, targets, 0, row_idx=order, num_splits=num_splits)
        tok = _launch_merge(part, _MODES[criterion], _scratch((n,), device))
        _launch_segment_mean(tok, bounds, out)
    return out


def packed_sequence_scores_triton(rows, weight, bias, targets, seq_index, num_seqs: int, criterion: str = "loss"):
    """float32 [num_seqs]: mean CE / entropy of each sequence's rows (``seq_index`` [N] gives the
    sequence of each row, in any order); ``-inf`` where a sequence has no row. No host sync."""
    return _packed_scores(rows, weight, bias, targets, seq_index, num_seqs, criterion)


def _stable_partition(mask: torch.Tensor):
    """Permutation putting the True positions of the 1-D ``mask`` first, both groups in their
    original order, and their number as a device tensor: cumsum + scatter, no host sync."""
    n = mask.numel()
    keep = mask.to(torch.int64)
    before = torch.cumsum(keep, 0)  # labelled positions up to and including i
    count = before[-1:]
    dest = torch.where(mask, before - 1, count + torch.arange(n, device=mask.device) - before)
    perm = torch.empty(n, dtype=torch.int64, device=mask.device)
    perm.scatter_(0, dest, torch.arange(n, device=mask.device))
    return perm, count


def _sequence_scores(hidden, weight, bias, labels, criterion="loss", *, out=None, num_splits=None,
                     labelled_fraction=_EXPECTED_LABELLED_FRACTION):
    check_criterion(criterion)
    if not 0.0 < labelled_fraction <= 1.0:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {labelled_fraction!r}")
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden [B, S, H] and labels [B, S], got {tuple(hidden.shape)}, {tuple(labels.shape)}")
    B, S, H = hidden.shape
    device = hidden.device
    x = hidden.reshape(B * S, H)
    _check_inputs(x, weight, bias)
    out = _output(out, B, device)
    if B * S == 0:
        return out.fill_(float("-inf"))
    flat_labels = labels.reshape(-1).to(device)
    mask = flat_labels != IGNORE_INDEX
    perm, count = _stable_partition(mask)  # labelled rows first, in (b, s) order
    bounds = torch.zeros(B + 1, dtype=torch.int64, device=device)
    torch.cumsum(mask.view(B, S).sum(dim=1), 0, out=bounds[1:])
    n_est = max(1, math.ceil(labelled_fraction * B * S))
    with _device_guard(device):
        part = _launch_stats(x, weight, bias, flat_labels, 0, row_idx=perm, count=count, n_rows_est=n_est,
                             num_splits=num_splits)
        tok = _launch_merge(part, _MODES[criterion], _scratch((B * S,), device), count=count)
        _launch_segment_mean(tok, bounds, out)
    return out


def sequence_scores_triton(hidden, weight, bias, labels, criterion: str = "loss", *,
                           labelled_fraction: float = _EXPECTED_LABELLED_FRACTION) -> torch.Tensor:
    """float32 [B]: mean CE / entropy over the labelled positions (label != -100) of each
    sequence, ``-inf`` where none. Labelled rows are compacted on the device; no host sync.

    The labelled count stays on the device, so the vocabulary split is planned for
    ``labelled_fraction`` of the ``B * S`` positions (0.15: BERT's masking; a causal LM labels
    nearly every position: pass 1.0). It steers the launch grid only, never the result."""
    return _sequence_scores(hidden, weight, bias, labels, criterion, labelled_fraction=labelled_fraction)


__all__ = [
    "packed_sequence_scores_triton",
    "sequence_scores_triton",
    "token_scores_triton",
    "vocab_partial_stats_triton",
]
