"""The fused early-exit scorer's three Triton kernels (the schedule and the math: ``triton_scorer``'s
docstring), as plain functions: ``scorer_launch`` makes them JIT-compiled (autotuned) or interpreted
kernels at first use, and launches them; ``aot`` compiles them ahead of time.

The kernels use builtins only, plus ``tl.reduce`` with the standard library's combine functions in
place of ``tl.sum`` / ``tl.max`` (and no ``tl.cdiv`` / ``tl.zeros``): those are themselves @jit
functions, decorated once in whichever mode triton was first imported in, whereas the interpreter
maps the combine functions to numpy by identity. So an interpreted run works even when something
(torch._dynamo, transformers) imported triton before TRITON_INTERPRET was set.
"""
from __future__ import annotations

import triton.language as tl

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
