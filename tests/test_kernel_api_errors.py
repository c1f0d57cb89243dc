"""Bad input to the public scorer API gets the same one-line error from both backends (issue 8, §4).

The Triton backend runs under the interpreter on the CPU (``TRITON_INTERPRET=1``, set per test).
"""
import math
import os

import pytest
import torch

from sift_ds import kernels

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not kernels.triton_available(), reason="triton does not import"))]
ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = torch.device("cuda" if ON_GPU else "cpu")


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def case(V=11, H=6, B=3, S=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, S, H, generator=g).to(DEVICE)
    w = torch.randn(V, H, generator=g).to(DEVICE)
    b = torch.randn(V, generator=g).to(DEVICE)
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[:, ::2] = -100
    return hidden, w, b, labels.to(DEVICE)


def packed(hidden, labels):
    flat, seq = kernels.compact_labelled(labels.cpu())
    flat, seq = flat.to(DEVICE), seq.to(DEVICE)
    return hidden.reshape(-1, hidden.shape[-1])[flat], labels.reshape(-1)[flat], seq


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [11, 12, 10**6, -1, -99, -101])
def test_labels_outside_vocab_raise(backend, bad):
    hidden, w, b, labels = case()
    labels[0, 1] = bad
    with pytest.raises(ValueError, match=rf"{bad} is outside the vocabulary \[0, 11\)"):
        kernels.sequence_scores(hidden, w, b, labels, "loss", backend)
    rows, targets, seq = packed(hidden, labels)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        kernels.packed_sequence_scores(rows, w, b, targets, seq, 3, "entropy", backend)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        kernels.token_scores(rows, w, b, targets, "loss", backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_edge_labels_and_ignore_index_pass(backend):
    hidden, w, b, labels = case()
    labels[0, 1], labels[1, 1] = 0, 10  # both ends of [0, V)
    got = kernels.sequence_scores(hidden, w, b, labels, "loss", backend)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_shard_stats_keep_shard_semantics(backend):
    """Ids of other shards are legal for vocab_shard_stats (no target logit here); -5 is not."""
    hidden, w, b, _ = case()
    rows = hidden.reshape(-1, hidden.shape[-1])[:4]
    targets = torch.tensor([0, 3, 50, -100], device=DEVICE)  # 50: another shard's id
    st = kernels.vocab_shard_stats(rows, w[:6], b[:6], targets, 0, backend)
    z = rows.double() @ w[:6].double().T + b[:6].double()
    assert st.target_logit.cpu()[2:].tolist() == [0.0, 0.0]
    torch.testing.assert_close(st.target_logit.cpu()[:2].double(), z[[0, 1], [0, 3]].cpu(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="-5 is outside"):
        kernels.vocab_shard_stats(rows, w[:6], b[:6], torch.tensor([0, 1, -5, 2], device=DEVICE), 0, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_shape_mismatch_is_a_clear_error(backend):
    hidden, w, b, labels = case()
    with pytest.raises(ValueError, match=r"bias must have shape \[V\] = \(11,\), got \(10,\)"):
        kernels.sequence_scores(hidden, w, b[:10], labels, "loss", backend)
    with pytest.raises(ValueError, match="same H"):
        kernels.sequence_scores(hidden, w[:, :5], b, labels, "loss", backend)
    rows, targets, seq = packed(hidden, labels)
    with pytest.raises(ValueError, match="bias must have shape"):
        kernels.packed_sequence_scores(rows, w, b[:, None], targets, seq, 3, "loss", backend)
    with pytest.raises(ValueError, match="bias must have shape"):
        kernels.vocab_shard_stats(rows, w, b[:3], targets, 0, backend)
    with pytest.raises(ValueError, match="one target per row"):
        kernels.token_scores(rows, w, b, targets[:-1], "loss", backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_vocabulary_is_a_clear_error(backend):
    hidden, w, b, labels = case()
    labels.fill_(-100)  # no label can be in [0, 0): the V = 0 error must come first
    with pytest.raises(ValueError, match=r"empty vocabulary.*V = 0"):
        kernels.sequence_scores(hidden, w[:0], b[:0], labels, "loss", backend)
    with pytest.raises(ValueError, match="empty vocabulary"):
        kernels.token_scores(hidden[0], w[:0], None, torch.zeros(5, dtype=torch.long, device=DEVICE), "loss", backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_hidden_states_refused_by_both(backend):
    hidden, w, b, labels = case()
    with pytest.raises(TypeError, match="hidden states must be floating point, got torch.int64"):
        kernels.sequence_scores(hidden.long(), w, b, labels, "loss", backend)
    with pytest.raises(TypeError, match="weight must be floating point"):
        kernels.sequence_scores(hidden, w.int(), b, labels, "loss", backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [True, False, 2.0, 1.5, "2", None])
def test_select_topk_rejects_non_integer_k(backend, k):
    s = torch.tensor([0.3, 2.0, -1.0, 0.5], device=DEVICE)
    with pytest.raises(TypeError, match="k must be an integer"):
        kernels.select_topk(s, k, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_select_topk_integer_like_k(backend):
    import numpy as np

    s = torch.tensor([0.3, 2.0, -1.0, 0.5], device=DEVICE)
    for k in (2, np.int64(2), torch.tensor(2)):
        assert kernels.select_topk(s, k, backend).tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"k must be in \[0, 4\], got 5"):
        kernels.select_topk(s, 5, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_never_negative(backend):
    """V = 1: CE and entropy are exactly 0 in real arithmetic; rounding must not make them < 0."""
    g = torch.Generator().manual_seed(5)
    rows = (torch.randn(40, 7, generator=g) * 30).to(DEVICE)
    w, b = torch.randn(1, 7, generator=g).to(DEVICE), torch.randn(1, generator=g).to(DEVICE)
    t = torch.zeros(40, dtype=torch.long, device=DEVICE)
    zmax = float((rows.double() @ w.double().T + b.double()).abs().max())
    for criterion in ("loss", "entropy"):
        got = kernels.token_scores(rows, w, b, t, criterion, backend)
        assert (got >= 0).all(), got  # without the clamp, some come out at -1e-7 .. -1e-5
        assert got.max() <= 1e-6 * zmax, (got.max(), zmax)  # fp32 rounding of logits of size zmax


def test_torch_fallback_chunks_rows_to_a_memory_budget(monkeypatch):
    """The reference materialises at most budget / (3 x 4 x V) rows of logits at once (on a CPU, a
    chunk that stays in a core's L2 cache, at least 8 rows), and chunking does not change the result
    (float64 reference)."""
    from sift_ds.kernels import reference

    assert reference._row_chunk(128256) * 3 * 4 * 128256 <= reference._LOGITS_BUDGET_BYTES
    assert reference._row_chunk(30522) < 8192  # the old fixed chunk cost ~3 GB at V 30k
    assert reference._row_chunk(8192, torch.device("cpu")) * 2 * 4 * 8192 <= reference._CPU_LOGITS_BUDGET_BYTES
    assert reference._row_chunk(128256, torch.device("cpu")) == reference._CPU_MIN_ROWS
    g = torch.Generator().manual_seed(2)
    rows, w, b = torch.randn(29, 8, generator=g), torch.randn(50, 8, generator=g), torch.randn(50, generator=g)
    t = torch.randint(0, 50, (29,), generator=g)
    monkeypatch.setattr(reference, "_CPU_LOGITS_BUDGET_BYTES", 2 * 4 * 50 * 4)  # 4 rows per chunk
    monkeypatch.setattr(reference, "_CPU_MIN_ROWS", 1)
    seen = []
    real_linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, *a: seen.append(x.shape[0]) or real_linear(x, *a))
    got = reference.token_scores_torch(rows, w, b, t, "loss")
    assert max(seen) == 4 and sum(seen) == 29
    logp = torch.log_softmax(rows.double() @ w.double().T + b.double(), -1)
    torch.testing.assert_close(got.double(), -logp.gather(1, t[:, None]).squeeze(1), atol=1e-5, rtol=0)
    assert math.isfinite(float(got.sum()))


def test_torch_fallback_never_builds_n_by_v_logits_at_large_vocabularies():
    """The public torch backend at a Qwen2-sized vocabulary (V = 151,936, untied head without bias):
    no tensor of the whole computation holds more than one chunk of rows x V (fewer rows than the
    batch scores), and the loss and entropy scores match float64 log-softmax."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from sift_ds.kernels import reference

    V, H, B, S = 151936, 8, 2, 48
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(B, S, H, generator=g)
    w = torch.randn(V, H, generator=g) / H**0.5
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[:, -1] = -100  # causal: the last position predicts nothing
    labels[1, 30:] = -100  # right padding
    largest = []

    class Largest(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            largest.extend(t.numel() for t in (out if isinstance(out, (tuple, list)) else [out]) if torch.is_tensor(t))
            return out

    with Largest():
        got = {c: kernels.sequence_scores(hidden, w, None, labels, c, backend="torch") for c in ("loss", "entropy")}
    chunk = reference._row_chunk(V, hidden.device)
    n = int((labels != -100).sum())
    assert chunk < n and max(largest) <= chunk * V < n * V
    for i in range(B):
        keep = labels[i] != -100
        logp = torch.log_softmax(hidden[i][keep].double() @ w.double().T, -1)
        want = {"loss": -logp.gather(1, labels[i][keep][:, None]).squeeze(1), "entropy": -(logp.exp() * logp).sum(1)}
        for c in got:
            torch.testing.assert_close(got[c][i].double(), want[c].mean(), atol=1e-4, rtol=0)
