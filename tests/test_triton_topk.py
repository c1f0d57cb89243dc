"""The Triton top-k kernel (interpreted on the CPU) against a plain-Python float64 ranking."""
import math
import os

import pytest
import torch

pytest.importorskip("triton")

from sift_ds import kernels  # noqa: E402
from sift_ds.kernels.ops.triton_topk import select_topk_triton  # noqa: E402

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    if ON_GPU:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield


def ref_topk(scores, k):
    vals = scores.double().tolist()
    key = [(v if math.isfinite(v) else -math.inf, -i) for i, v in enumerate(vals)]
    return sorted(range(len(vals)), key=lambda i: key[i], reverse=True)[:k]


def _device():
    return torch.device("cuda" if ON_GPU else "cpu")


@pytest.mark.parametrize("n", [1, 7, 64, 65, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_topk_matches_reference(n, dtype):
    g = torch.Generator().manual_seed(n)
    s = torch.randn(n, generator=g).to(dtype)
    s[torch.rand(n, generator=g) < 0.1] = float("nan")
    s[torch.rand(n, generator=g) < 0.05] = float("inf")
    s[torch.rand(n, generator=g) < 0.05] = -float("inf")
    if n > 4:
        s[3] = s[1]  # an exact tie
    for k in sorted({0, 1, n // 2, n}):
        out = torch.full((k,), -7, dtype=torch.int64, device=_device())  # poisoned: every slot must be written
        got = select_topk_triton(s.to(_device()), k, out=out)
        assert got.tolist() == ref_topk(s, k), (n, k, dtype)


def test_public_api_dispatches_to_triton():
    s = torch.tensor([0.5, float("nan"), 2.0, 2.0, -1.0], device=_device())
    assert kernels.select_topk(s, 3, backend="triton").tolist() == [2, 3, 0]
    with pytest.raises(ValueError, match="k must be"):
        select_topk_triton(s, 6)


def test_token_scores_and_shard_stats_exports_agree_with_float64():
    g = torch.Generator().manual_seed(3)
    rows, w, b = torch.randn(9, 20, generator=g), torch.randn(45, 20, generator=g) / 5, torch.randn(45, generator=g)
    t = torch.randint(0, 45, (9,), generator=g)
    logp = torch.log_softmax(rows.double() @ w.double().T + b.double(), -1)
    ce = -logp.gather(1, t[:, None]).squeeze(1)
    ent = -(logp.exp() * logp).sum(-1)
    dev = _device()
    rows, w, b, t = rows.to(dev), w.to(dev), b.to(dev), t.to(dev)
    for backend in ("torch", "triton"):
        torch.testing.assert_close(kernels.token_scores(rows, w, b, t, "loss", backend).double().cpu(), ce, atol=1e-4, rtol=1e-4)
        shards = [kernels.vocab_shard_stats(rows, w[:20], b[:20], t, 0, backend),
                  kernels.vocab_shard_stats(rows, w[20:], b[20:], t, 20, backend)]
        merged = kernels.merge_vocab_stats(shards)
        torch.testing.assert_close(kernels.finish_token_scores(merged, "entropy").double().cpu(), ent, atol=1e-4, rtol=1e-4)
