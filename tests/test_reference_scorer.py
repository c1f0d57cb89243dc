"""sequence_scores / select_topk (torch backend) against float64 math written out independently.

Every random input comes from a seeded generator (fixed per test and parameter), so a failure replays.
"""
import math

import pytest
import torch

from sift_ds import kernels


def f64_sequence_scores(hidden, weight, bias, labels, criterion):
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    logp = torch.log_softmax(z, dim=-1)
    out = []
    for b in range(labels.shape[0]):
        vals = []
        for s in range(labels.shape[1]):
            t = int(labels[b, s])
            if t == -100:
                continue
            if criterion == "loss":
                vals.append(-logp[b, s, t].item())
            else:
                p = logp[b, s].exp()
                vals.append(-(p * logp[b, s]).sum().item())
        out.append(sum(vals) / len(vals) if vals else -math.inf)
    return torch.tensor(out, dtype=torch.float64)


def random_case(B=5, S=7, H=13, V=37, p_label=0.3, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, S, H, generator=g)
    weight = torch.randn(V, H, generator=g) / math.sqrt(H)
    b = torch.randn(V, generator=g) if bias else None
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[torch.rand(B, S, generator=g) > p_label] = -100
    if B > 1:
        labels[1] = -100  # a sequence with no labelled position
    return hidden, weight, b, labels


@pytest.mark.parametrize("criterion", ["loss", "entropy"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 7, 13, 37), (3, 16, 32, 64), (1, 1, 1, 2), (4, 9, 31, 101)])
def test_sequence_scores_match_float64(criterion, bias, shape):
    B, S, H, V = shape
    hidden, weight, b, labels = random_case(B, S, H, V, bias=bias, seed=B * 1000 + V + bias)
    got = kernels.sequence_scores(hidden, weight, b, labels, criterion=criterion, backend="torch")
    ref = f64_sequence_scores(hidden, weight, b, labels, criterion)
    assert got.dtype == torch.float32 and got.shape == (B,)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), finite)
    assert (got[~finite] == -math.inf).all()
    torch.testing.assert_close(got[finite].double(), ref[finite], atol=2e-5, rtol=2e-5)


def test_sequence_scores_low_precision_inputs_close_to_float64():
    hidden, weight, b, labels = random_case(4, 8, 24, 50, seed=1)
    for dtype in (torch.bfloat16, torch.float16):
        h, w, bb = hidden.to(dtype), weight.to(dtype), b.to(dtype)
        got = kernels.sequence_scores(h, w, bb, labels, "loss", backend="torch")
        ref = f64_sequence_scores(h, w, bb, labels, "loss")  # same rounded inputs, exact math
        finite = torch.isfinite(ref)
        torch.testing.assert_close(got[finite].double(), ref[finite], atol=1e-4, rtol=1e-4)


def test_huge_logits_do_not_overflow():
    hidden, weight, b, labels = random_case(3, 6, 8, 20, seed=2)
    hidden = hidden * 1e4
    for criterion in ("loss", "entropy"):
        got = kernels.sequence_scores(hidden, weight, b, labels, criterion, backend="torch")
        ref = f64_sequence_scores(hidden, weight, b, labels, criterion)
        finite = torch.isfinite(ref)
        assert torch.isfinite(got[finite]).all()
        torch.testing.assert_close(got[finite].double(), ref[finite], atol=1e-2, rtol=1e-5)


def test_vocab_split_merge_equals_full_vocab():
    hidden, weight, b, labels = random_case(4, 8, 16, 41, seed=3)
    flat, _ = kernels.compact_labelled(labels)
    rows = hidden.reshape(-1, 16)[flat]
    targets = labels.reshape(-1)[flat]
    cut = 17
    parts = [
        kernels.vocab_partial_stats(rows, weight[:cut], b[:cut], targets, vocab_start=0),
        kernels.vocab_partial_stats(rows, weight[cut:], b[cut:], targets, vocab_start=cut),
    ]
    merged = kernels.merge_vocab_stats(parts)
    z = rows.double() @ weight.double().T + b.double()
    logp = torch.log_softmax(z, -1)
    ce = -logp.gather(1, targets[:, None]).squeeze(1)
    ent = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(kernels.finish_token_scores(merged, "loss").double(), ce, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(kernels.finish_token_scores(merged, "entropy").double(), ent, atol=2e-5, rtol=1e-5)


def f64_topk(scores, k):
    """Largest first, non-finite below all finite, ties to the lower index: a plain Python sort."""
    vals = scores.double().tolist()
    key = [(v if math.isfinite(v) else -math.inf, -i) for i, v in enumerate(vals)]
    order = sorted(range(len(vals)), key=lambda i: key[i], reverse=True)
    return order[:k]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_select_topk_random(dtype):
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        n = int(torch.randint(1, 40, (), generator=g))
        k = int(torch.randint(0, n + 1, (), generator=g))
        s = torch.randn(n, generator=g).to(dtype)
        s[s > 1.2] = s[0]  # ties (bf16 adds more), resolved to the lower index
        assert kernels.select_topk(s, k).tolist() == f64_topk(s, k)


def test_select_topk_nonfinite_and_ties():
    s = torch.tensor([1.0, float("nan"), 3.0, float("inf"), 3.0, -float("inf"), 1.0, 0.5])
    # finite first (3.0 @2 before 3.0 @4, 1.0 @0 before @6), then the non-finite in index order
    assert kernels.select_topk(s, 8).tolist() == [2, 4, 0, 6, 7, 1, 3, 5]
    assert kernels.select_topk(s, 3).tolist() == [2, 4, 0]
    with pytest.raises(ValueError):
        kernels.select_topk(s, 9)


def test_reduce_to_sequences_mean_and_empty():
    tok = torch.tensor([1.0, 3.0, 5.0])
    seq = torch.tensor([0, 0, 2])
    got = kernels.reduce_to_sequences(tok, seq, 4)
    assert got.tolist() == [2.0, -math.inf, 5.0, -math.inf]


def test_bad_arguments_are_rejected():
    hidden, weight, b, labels = random_case(2, 3, 4, 5, seed=4)
    with pytest.raises(ValueError, match="criterion"):
        kernels.sequence_scores(hidden, weight, b, labels, criterion="mse")
    with pytest.raises(ValueError, match="backend"):
        kernels.sequence_scores(hidden, weight, b, labels, backend="cuda")
    with pytest.raises(ValueError, match="labels"):
        kernels.sequence_scores(hidden, weight, b, labels[:, :2])
