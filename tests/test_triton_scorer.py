"""The fused Triton scorer against an independent float64 reference.

Runs on the CPU under the Triton interpreter (``TRITON_INTERPRET=1``, set by a module fixture; the
kernels are built at call time, so it does not matter whether another test module imported triton
first), or compiled on a CUDA device when one is present and the variable is not set.

Inputs are fresh random tensors on every run; the seed is printed (shown on failure) and
``SIFT_TEST_SEED=<seed>`` replays a run. The reference is plain float64 torch: logits
``rows @ W.T + b``, ``log_softmax``, cross-entropy ``-log p[target]`` and entropy
``-sum p log p``, from the same (bf16/fp16-rounded) inputs upcast to float64. Every output and
every scratch buffer of the kernels is filled with NaN beforehand, so an element the kernels
fail to write shows up.
"""
from __future__ import annotations

import math
import os
import secrets

import pytest
import torch

pytest.importorskip("triton")

from sift_ds import kernels  # noqa: E402
from sift_ds.kernels.ops import scorer_launch as launch  # noqa: E402
from sift_ds.kernels.ops import triton_scorer as ts  # noqa: E402
from sift_ds.kernels.reference import finish_token_scores, merge_vocab_stats  # noqa: E402

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Absolute tolerances (CE, entropy) of the order verl and CCE use for bf16.
TOL = {
    torch.float32: {"loss": 1e-4, "entropy": 1e-4},
    torch.bfloat16: {"loss": 1e-3, "entropy": 5e-3},
    torch.float16: {"loss": 1e-3, "entropy": 5e-3},
}
# Interpreter blocks are 16 (rows) x 32 (vocab) x 16 (hidden): these shapes are none of their
# multiples and give several tiles along every axis.
N, H, V = 37, 45, 301


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    with pytest.MonkeyPatch.context() as mp:
        if not ON_GPU:
            mp.setenv("TRITON_INTERPRET", "1")
        yield


@pytest.fixture(autouse=True)
def _poison_scratch(monkeypatch):
    monkeypatch.setattr(launch, "_POISON_SCRATCH", True)


@pytest.fixture
def gen(request):
    seed = int(os.environ.get("SIFT_TEST_SEED", secrets.randbits(31)))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed} (replay with SIFT_TEST_SEED={seed})")
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# float64 reference (independent of reference.py and of the kernels)
# ---------------------------------------------------------------------------------------------


def logits64(rows, weight, bias):
    z = rows.double() @ weight.double().T
    return z if bias is None else z + bias.double()


def token_scores64(rows, weight, bias, targets, criterion):
    logp = torch.log_softmax(logits64(rows, weight, bias), dim=1)
    if criterion == "loss":
        return -logp.gather(1, targets.long()[:, None]).squeeze(1)
    return -(logp.exp() * logp).sum(dim=1)


def sequence_means64(tok, seq, num_seqs):
    out = torch.full((num_seqs,), -math.inf, dtype=torch.float64)
    for i in range(num_seqs):
        sel = tok[seq == i]
        if sel.numel():
            out[i] = sel.mean()
    return out


def labelled_means64(hidden, weight, bias, labels, criterion):
    """Per-sequence float64 means over the labelled positions of hidden [B, S, H]."""
    B, S, Hd = hidden.shape
    flat = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    tok = token_scores64(hidden.reshape(-1, Hd)[flat], weight, bias, labels.reshape(-1)[flat], criterion)
    return sequence_means64(tok.cpu(), torch.div(flat, S, rounding_mode="floor").cpu(), B)


def make_head(gen, v, h, dtype, with_bias=True):
    """Tied decoder with logits of std ~3 (peaked and flat rows both occur)."""
    w = (torch.randn(v, h, generator=gen) * (3.0 / math.sqrt(h))).to(dtype)
    b = (torch.randn(v, generator=gen) * 0.5).to(dtype) if with_bias else None
    return w.to(DEVICE), None if b is None else b.to(DEVICE)


def make_labels(gen, b, s, v, frac=0.3):
    labels = torch.randint(0, v, (b, s), generator=gen)
    labels[torch.rand(b, s, generator=gen) >= frac] = -100
    labels[1] = -100  # a sequence with no labelled position -> -inf
    labels[2] = -100
    labels[2, s // 2] = int(torch.randint(0, v, (1,), generator=gen))  # exactly one
    return labels.to(DEVICE)


def nan_out(n):
    return torch.full((n,), math.nan, dtype=torch.float32, device=DEVICE)


def assert_close64(got, want, atol):
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu().double(), want.cpu(), atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------
# per token
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_splits", [1, 4])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_scores_match_float64(gen, dtype, with_bias, num_splits):
    w, b = make_head(gen, V, H, dtype, with_bias)
    rows = torch.randn(N, H, generator=gen).to(dtype).to(DEVICE)
    targets = torch.randint(0, V, (N,), generator=gen).to(DEVICE)
    for criterion in ("loss", "entropy"):
        out = nan_out(N)
        got = ts._token_scores(rows, w, b, targets, criterion, out=out, num_splits=num_splits)
        assert got is out
        assert_close64(got, token_scores64(rows, w, b, targets, criterion), TOL[dtype][criterion])


def test_mixed_dtypes_and_strided_rows(gen):
    """bf16 rows against an fp32 head, rows a strided (non-contiguous) view."""
    w, b = make_head(gen, V, H, torch.float32)
    base = torch.randn(N, 2 * H, generator=gen).to(torch.bfloat16).to(DEVICE)
    rows = base[:, ::2]
    targets = torch.randint(0, V, (N,), generator=gen).to(DEVICE)
    got = ts.token_scores_triton(rows, w, b, targets, "loss")
    assert_close64(got, token_scores64(rows, w, b, targets, "loss"), 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_huge_logits_do_not_overflow(gen, dtype):
    """Rows scaled by 1e3 (logits ~1e4): exp must only ever see z - max <= 0."""
    w, b = make_head(gen, V, H, dtype)
    rows = torch.randn(N, H, generator=gen)
    rows[3] *= 1e3
    rows[-1] *= -1e3
    rows = rows.to(dtype).to(DEVICE)
    targets = torch.randint(0, V, (N,), generator=gen).to(DEVICE)
    zmax = logits64(rows, w, b).abs().max().item()
    for criterion in ("loss", "entropy"):
        got = ts._token_scores(rows, w, b, targets, criterion, out=nan_out(N), num_splits=3)
        assert torch.isfinite(got).all()
        # fp32 accumulation of H products of size ~zmax: allow a few ulps of zmax per product.
        assert_close64(got, token_scores64(rows, w, b, targets, criterion), 1e-6 * H * zmax)


def test_out_of_vocab_targets_score_logsumexp(gen):
    """Inside the kernel (the shard semantics of vocab_partial_stats), a target outside [0, V)
    contributes no target logit: CE = logsumexp. The public API refuses such labels before
    (tests/test_kernel_api_errors.py)."""
    w, b = make_head(gen, V, H, torch.float32)
    rows = torch.randn(N, H, generator=gen).to(DEVICE)
    targets = torch.randint(0, V, (N,), generator=gen)
    targets[::5] = V + 7
    targets[1::5] = -100
    got = ts.token_scores_triton(rows, w, b, targets.to(DEVICE), "loss")
    lse = torch.logsumexp(logits64(rows, w, b), dim=1).cpu()
    inside = (targets >= 0) & (targets < V)
    want = torch.where(inside, token_scores64(rows, w, b, targets.clamp(0, V - 1), "loss").cpu(), lse)
    assert_close64(got, want, 1e-4)


# ---------------------------------------------------------------------------------------------
# vocabulary split merge (tensor-parallel shards)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_vocab_parallel_shards_merge(gen, dtype):
    """Megatron-style: W split over V in two shards, each scored on its own (global target ids,
    ``vocab_start``), merged with ``merge_vocab_stats`` and finished."""
    w, b = make_head(gen, V, H, dtype)
    rows = torch.randn(N, H, generator=gen).to(dtype).to(DEVICE)
    targets = torch.randint(0, V, (N,), generator=gen).to(DEVICE)
    cut = 131
    shards = [(0, slice(0, cut)), (cut, slice(cut, V))]
    parts = []
    for start, sl in shards:
        stats = ts.vocab_partial_stats_triton(rows, w[sl], b[sl], targets, vocab_start=start, num_splits=2)
        # each shard's statistics against float64 ones of that shard's logits
        z = logits64(rows, w[sl], b[sl]).cpu()
        m = z.max(dim=1).values
        e = torch.exp(z - m[:, None])
        local = targets.cpu() - start
        inside = (local >= 0) & (local < z.shape[1])
        zt = torch.where(inside, z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None]).squeeze(1), 0.0)
        assert_close64(stats.max, m, 1e-4)
        torch.testing.assert_close(stats.sumexp.cpu().double(), e.sum(1), rtol=1e-5, atol=0)
        assert_close64(stats.sumzexp, ((z - m[:, None]) * e).sum(1), 1e-3)
        assert_close64(stats.target_logit, zt, 1e-4)
        parts.append(stats)
    merged = merge_vocab_stats(parts)
    for criterion in ("loss", "entropy"):
        got = finish_token_scores(merged, criterion)
        assert_close64(got, token_scores64(rows, w, b, targets, criterion), TOL[dtype][criterion])


# ---------------------------------------------------------------------------------------------
# per sequence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sequence_scores_match_float64(gen, dtype):
    B, S = 5, 23
    w, b = make_head(gen, V, H, dtype)
    hidden = torch.randn(B, S, H, generator=gen).to(dtype).to(DEVICE)
    labels = make_labels(gen, B, S, V)
    for criterion in ("loss", "entropy"):
        want = labelled_means64(hidden, w, b, labels, criterion)
        assert torch.isinf(want[1]) and torch.isfinite(want[2])
        got = ts._sequence_scores(hidden, w, b, labels, criterion, out=nan_out(B), num_splits=3)
        assert_close64(got, want, TOL[dtype][criterion])
        public = kernels.sequence_scores(hidden, w, b, labels, criterion, backend="triton")
        assert_close64(public, want, TOL[dtype][criterion])


def test_sequence_scores_all_unlabelled_and_bias_none(gen):
    w, _ = make_head(gen, V, H, torch.float32, with_bias=False)
    hidden = torch.randn(3, 7, H, generator=gen).to(DEVICE)
    labels = torch.full((3, 7), -100, device=DEVICE)
    got = ts._sequence_scores(hidden, w, None, labels, "entropy", out=nan_out(3))
    assert torch.isneginf(got).all()


@pytest.mark.parametrize("criterion", ["loss", "entropy"])
def test_packed_scores_match_float64(gen, criterion):
    """Rows in shuffled order, sequence ids interleaved, sequences 0 and 5 without rows."""
    num_seqs, n = 7, 41
    dtype = torch.bfloat16
    w, b = make_head(gen, V, H, dtype)
    rows = torch.randn(n, H, generator=gen).to(dtype).to(DEVICE)
    targets = torch.randint(0, V, (n,), generator=gen).to(DEVICE)
    ids = torch.tensor([1, 2, 3, 4, 6])
    seq = ids[torch.randint(0, len(ids), (n,), generator=gen)].to(DEVICE)
    want = sequence_means64(token_scores64(rows, w, b, targets, criterion).cpu(), seq.cpu(), num_seqs)
    got = ts._packed_scores(rows, w, b, targets, seq, num_seqs, criterion, out=nan_out(num_seqs), num_splits=2)
    assert_close64(got, want, TOL[dtype][criterion])
    assert torch.isneginf(got[[0, 5]]).all()
    public = kernels.packed_sequence_scores(rows, w, b, targets, seq, num_seqs, criterion, backend="triton")
    assert_close64(public, want, TOL[dtype][criterion])


def test_packed_scores_no_rows():
    w = torch.randn(V, H, device=DEVICE)
    got = ts.packed_sequence_scores_triton(
        torch.empty(0, H, device=DEVICE), w, None, torch.empty(0, dtype=torch.long, device=DEVICE),
        torch.empty(0, dtype=torch.long, device=DEVICE), 4, "loss")
    assert got.shape == (4,) and torch.isneginf(got).all()


@pytest.mark.parametrize("criterion", ["loss", "entropy"])
def test_topk_matches_float64_ranking(gen, criterion):
    """The top-k of the kernel's scores is the reference's, except where scores tie within the
    tolerance (then the selected scores must still agree)."""
    B, S, k = 16, 9, 6
    dtype = torch.bfloat16
    w, b = make_head(gen, V, H, dtype)
    hidden = torch.randn(B, S, H, generator=gen).to(dtype).to(DEVICE)
    labels = make_labels(gen, B, S, V, frac=0.4)
    want = labelled_means64(hidden, w, b, labels, criterion)
    got = ts._sequence_scores(hidden, w, b, labels, criterion, out=nan_out(B), num_splits=2)
    tol = TOL[dtype][criterion]
    sel = kernels.select_topk(got, k).cpu()
    ref = torch.sort(want, descending=True, stable=True).indices[:k]
    torch.testing.assert_close(want[sel], want[ref], atol=2 * tol, rtol=0)
    for i in range(k):
        if sel[i] != ref[i]:  # only a near tie may swap
            assert abs(want[sel[i]] - want[ref[i]]) <= 2 * tol
    assert 1 not in sel.tolist()  # the unlabelled sequence (-inf) is never picked before a scored one


# ---------------------------------------------------------------------------------------------
# causal-LM heads: untied, no bias, vocabulary split planned from the shape and the SM count
# ---------------------------------------------------------------------------------------------

# Interpreter-scale twin of a large-vocabulary launch: V spans 15 tiles of 32 columns, the rows only one
# or two blocks of 16, so -- as with a thousand rows at V = 128k on 132 SMs -- one pass over V would
# leave most of the (here 8) SMs idle, and the plan splits V.
CAUSAL_V, CAUSAL_H, CAUSAL_SMS = 449, 24, 8


def causal_labels(gen, b, s, v, lengths):
    """HF's causal convention after the adapter's shift: position t predicts token t+1, the last real
    position and the right padding are -100, plus a few ignored positions inside the rows."""
    labels = torch.randint(0, v, (b, s), generator=gen)
    for i, n in enumerate(lengths):
        labels[i, max(n - 1, 0):] = -100
    labels[torch.rand(b, s, generator=gen) < 0.1] = -100
    return labels.to(DEVICE)


def interpreter_plan(n_rows):
    cfg = launch._INTERPRET_CONFIG
    return launch.plan_splits(CAUSAL_V, n_rows, CAUSAL_SMS, block_n=cfg["BLOCK_N"], align=cfg["BLOCK_V"],
                          min_split=2 * cfg["BLOCK_V"], overhead_cols=cfg["BLOCK_V"])


def test_interpreter_plan_splits_when_row_blocks_do_not_fill_the_sms():
    """The plan, at interpreter scale: 1-2 row blocks on 8 SMs -> several aligned splits, so the
    grid fills at least 3/4 of one wave; the plan is a pure function of (V, rows, SMs)."""
    for n in (17, 27, 32):
        split, splits = interpreter_plan(n)
        blocks = -(-n // launch._INTERPRET_CONFIG["BLOCK_N"])
        assert blocks < CAUSAL_SMS and splits > 1 and split % launch._INTERPRET_CONFIG["BLOCK_V"] == 0
        assert (splits - 1) * split < CAUSAL_V <= splits * split
        assert blocks * splits >= 0.75 * CAUSAL_SMS
        assert interpreter_plan(n) == (split, splits)


@pytest.mark.parametrize("criterion", ["loss", "entropy"])
def test_causal_untied_head_with_planned_vocab_split(gen, criterion):
    """bf16 untied head without bias (Llama / Qwen style), causal labels with ignored positions and a
    row with none: the sequence path (on-device compaction) and the packed path, each split over V as
    planned and merged by the merge kernel, against float64 log-softmax."""
    B, S = 3, 9
    dtype = torch.bfloat16
    w, _ = make_head(gen, CAUSAL_V, CAUSAL_H, dtype, with_bias=False)
    hidden = torch.randn(B, S, CAUSAL_H, generator=gen).to(dtype).to(DEVICE)
    labels = causal_labels(gen, B, S, CAUSAL_V, lengths=[S, 1, 6])  # row 1: one token, nothing to predict
    labels[0, 0] = labels[2, 0] = 7  # each of rows 0 and 2 keeps a labelled position
    want = labelled_means64(hidden, w, None, labels, criterion)
    assert torch.isneginf(want[1]) and torch.isfinite(want[[0, 2]]).all()

    n_est = B * S  # causal rows: nearly every position is labelled
    split, splits = interpreter_plan(n_est)
    assert splits > 1
    got = ts._sequence_scores(hidden, w, None, labels, criterion, out=nan_out(B), num_splits=splits)
    assert_close64(got, want, TOL[dtype][criterion])

    flat = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    rows = hidden.reshape(-1, CAUSAL_H)[flat]
    targets = labels.reshape(-1)[flat]
    seq = torch.div(flat, S, rounding_mode="floor")
    split, splits = interpreter_plan(rows.shape[0])
    assert splits > 1
    got = ts._packed_scores(rows, w, None, targets, seq, B, criterion, out=nan_out(B), num_splits=splits)
    assert_close64(got, want, TOL[dtype][criterion])


def test_split_partials_are_the_slices_statistics(gen):
    """Each program of a split launch writes the (max, sum-exp, sum z*exp, target logit) of its own
    vocabulary slice, and ignored targets (-100) get no target logit in any slice: the partials
    against float64 statistics of each slice, before the merge."""
    n = 18
    w, _ = make_head(gen, CAUSAL_V, CAUSAL_H, torch.float32, with_bias=False)
    rows = torch.randn(n, CAUSAL_H, generator=gen).to(DEVICE)
    targets = torch.randint(0, CAUSAL_V, (n,), generator=gen)
    targets[::4] = -100
    split, splits = interpreter_plan(n)
    part = ts._launch_stats(rows, w, None, targets.to(DEVICE), 0, num_splits=splits).cpu().double()
    assert part.shape == (4, splits, n) and not part.isnan().any()
    z = logits64(rows, w, None).cpu()
    for i in range(splits):
        lo, hi = i * split, min((i + 1) * split, CAUSAL_V)
        zs = z[:, lo:hi]
        m = zs.max(dim=1).values
        e = torch.exp(zs - m[:, None])
        inside = (targets >= lo) & (targets < hi)
        zt = torch.where(inside, z.gather(1, targets.clamp(0, CAUSAL_V - 1)[:, None]).squeeze(1), 0.0)
        torch.testing.assert_close(part[0, i], m, atol=1e-4, rtol=0)
        torch.testing.assert_close(part[1, i], e.sum(1), rtol=1e-5, atol=0)
        torch.testing.assert_close(part[2, i], ((zs - m[:, None]) * e).sum(1), atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(part[3, i], zt, atol=1e-4, rtol=0)
    assert (part[3, :, ::4] == 0).all()  # ignored targets: no target logit anywhere


# ---------------------------------------------------------------------------------------------
# no host synchronisation
# ---------------------------------------------------------------------------------------------


def test_sequence_path_has_no_data_dependent_host_ops(gen, monkeypatch):
    """The compaction and launches never read a device value on the host: record every aten op
    of the host-side code (kernel launches stubbed) and reject .item()/nonzero/masked_select."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(ts, "_launch_stats", lambda x, *a, **kw: launch._scratch((4, 1, x.shape[0]), x.device))
    monkeypatch.setattr(ts, "_launch_merge", lambda part, mode, out, count=None: out)
    monkeypatch.setattr(ts, "_launch_segment_mean", lambda tok, bounds, out: out)
    w, b = make_head(gen, V, H, torch.float32)
    hidden = torch.randn(4, 11, H, generator=gen).to(DEVICE)
    labels = make_labels(gen, 4, 11, V)
    with Record():
        ts.sequence_scores_triton(hidden, w, b, labels, "loss")
    forbidden = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.item"}
    assert seen and not (seen & forbidden), sorted(seen)


@pytest.mark.skipif(ON_GPU, reason="counts the interpreter's tl.dot calls")
def test_only_labelled_rows_cost_vocab_work(gen, monkeypatch):
    """Row blocks past the device-side count exit at once: scoring [B, S] with n labelled positions
    does exactly the tl.dot work of scoring the n compacted rows."""
    from triton.runtime import interpreter

    dots = []
    real_dot = interpreter.interpreter_builder.create_dot
    monkeypatch.setattr(interpreter.interpreter_builder, "create_dot", lambda *a: dots.append(1) or real_dot(*a))
    B, S = 6, 20
    w, b = make_head(gen, V, H, torch.float32)
    hidden = torch.randn(B, S, H, generator=gen).to(DEVICE)
    labels = make_labels(gen, B, S, V, frac=0.15)
    flat = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    ts._sequence_scores(hidden, w, b, labels, "loss", num_splits=2)
    unpacked = len(dots)
    dots.clear()
    ts._token_scores(hidden.reshape(-1, H)[flat], w, b, labels.reshape(-1)[flat], "loss", num_splits=2)
    assert 0 < unpacked == len(dots)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (compiled kernels)")
def test_no_sync_on_cuda(gen):
    w, b = make_head(gen, 30522, 768, torch.bfloat16)
    hidden = torch.randn(8, 128, 768, generator=gen).to(torch.bfloat16).to(DEVICE)
    labels = make_labels(gen, 8, 128, 30522, frac=0.15)
    ts.sequence_scores_triton(hidden, w, b, labels, "loss")  # autotune (syncs) outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = ts.sequence_scores_triton(hidden, w, b, labels, "loss")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close64(got, labelled_means64(hidden, w, b, labels, "loss"), 2e-3)


# ---------------------------------------------------------------------------------------------
# launch planning (host side; no kernel runs)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("V,n", [(30522, 4915), (128256, 8192), (50257, 4915), (30522, 2000), (32000, 16384),
                                 (151936, 32760), (256000, 4096)])
@pytest.mark.parametrize("sms", [108, 132])
def test_split_plan_fills_whole_waves(V, n, sms):
    """Aligned splits that cover V, nearly equal (the last one too), and a grid of (128-row block,
    split) programs that fills its last wave of one CTA per SM at least 85%. The old plan (~4 waves
    of 1024+ columns) gave 4.1 waves (83%) and a last split of a quarter of the others at BERT-base."""
    split, splits = launch.plan_splits(V, n, sms)
    assert split % launch._SPLIT_ALIGN == 0 and (splits - 1) * split < V <= splits * split
    assert V - (splits - 1) * split >= 0.8 * split or splits == 1
    programs = -(-n // 128) * splits
    waves = -(-programs // sms)
    assert programs / (waves * sms) >= 0.85, (split, splits, programs / sms)


@pytest.mark.parametrize("V,n", [(128256, 1024), (151936, 512), (256000, 256), (32000, 1024), (151936, 2048)])
@pytest.mark.parametrize("sms", [108, 132])
def test_split_plan_fills_the_gpu_when_row_blocks_are_few(V, n, sms):
    """Fewer 128-row blocks than SMs (a causal batch scoring a subset of positions at V = 32k-256k):
    one pass over V per row block would leave most SMs idle; the plan splits V so that the (row
    block, split) programs fill one wave at least 85%, with aligned splits covering V."""
    blocks = -(-n // 128)
    assert blocks < sms
    split, splits = launch.plan_splits(V, n, sms)
    assert split % launch._SPLIT_ALIGN == 0 and (splits - 1) * split < V <= splits * split
    programs = blocks * splits
    waves = -(-programs // sms)
    assert splits > 1 and programs / (waves * sms) >= 0.85, (split, splits, programs / sms)
    assert launch.plan_splits(V, n, sms) == (split, splits)  # deterministic: a function of the shape


def test_sequence_path_plans_for_the_labelled_fraction(gen, monkeypatch):
    """The no-sync sequence path plans its grid for ``labelled_fraction`` of the B*S positions
    (BERT's 15% by default, 1.0 for a causal batch); a fraction outside (0, 1] is refused."""
    seen = []
    monkeypatch.setattr(ts, "_launch_stats", lambda x, *a, n_rows_est=None, **kw: seen.append(n_rows_est)
                        or launch._scratch((4, 1, x.shape[0]), x.device))
    monkeypatch.setattr(ts, "_launch_merge", lambda part, mode, out, count=None: out)
    monkeypatch.setattr(ts, "_launch_segment_mean", lambda tok, bounds, out: out)
    w, _ = make_head(gen, V, H, torch.float32, with_bias=False)
    hidden = torch.randn(4, 25, H, generator=gen).to(DEVICE)
    labels = make_labels(gen, 4, 25, V)
    ts.sequence_scores_triton(hidden, w, None, labels, "loss")
    ts.sequence_scores_triton(hidden, w, None, labels, "loss", labelled_fraction=1.0)
    assert seen == [15, 100]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="labelled_fraction must be in"):
            ts.sequence_scores_triton(hidden, w, None, labels, "loss", labelled_fraction=bad)


def test_autotune_key_is_a_shape_bucket():
    """Row counts that differ step to step map to few buckets: the autotuner runs once per bucket."""
    assert launch.rows_bucket(1) == launch.rows_bucket(256) == 256
    assert launch.rows_bucket(4000) == launch.rows_bucket(4096) == 4096
    assert launch.rows_bucket(4097) == launch.rows_bucket(4915) == 8192
    assert len({launch.rows_bucket(n) for n in range(4000, 6000)}) == 2
    stats = launch._kernels(False, 8)[0]
    assert list(stats.keys) == ["H", "V", "rows_bucket"] and "split_size" not in stats.keys
    assert all(c.kwargs["BLOCK_N"] in (64, 128) for c in launch.cuda_configs(8))
    assert len(launch.cuda_configs(8)) < len(launch.cuda_configs(9))  # the configs that spill on sm_80 are off
