"""The loss-balancing baselines (sift_ds.async_convergence.balancing) against float64 references
written out by hand here: uncertainty weighting's gradients w.r.t. a tiny model's parameters and the
log-variances, DWA's weights over scripted window losses (and its resume mid-window), and PCGrad's
projected gradient on conflicting and non-conflicting gradients, alone and split into shared and
task-specific parameters of a tiny model."""
import itertools
import math

import pytest
import torch

from sift_ds.async_convergence.balancing import BalancingConfig, DynamicWeightAverage, UncertaintyWeighting
from sift_ds.async_convergence.balancing_pcgrad import TaskGradients, draw_orders, project_conflicting

F64 = torch.float64


def pcgrad_reference(grads, orders):
    """Yu et al.'s Algorithm 1 on plain Python floats: g_i projected against each g_j in order[i]
    with which it conflicts, then summed."""
    total = [0.0] * len(grads[0])
    for i, order in enumerate(orders):
        g = list(grads[i])
        for j in order:
            dot = sum(a * b for a, b in zip(g, grads[j]))
            if dot < 0:
                norm = sum(b * b for b in grads[j])
                g = [a - dot / norm * b for a, b in zip(g, grads[j])]
        total = [t + a for t, a in zip(total, g)]
    return total


# ---- uncertainty weighting ----
def test_uncertainty_gradient_matches_the_hand_formula():
    g = torch.Generator().manual_seed(0)
    x, y1, y2 = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64), \
        torch.randn(6, generator=g, dtype=F64)
    w = torch.randn(3, generator=g, dtype=F64, requires_grad=True)
    b1, b2 = (torch.zeros((), dtype=F64, requires_grad=True) for _ in range(2))
    balancer = UncertaintyWeighting(BalancingConfig("uncertainty"), ["a", "b"], {"a": 1.0, "b": 2.0}, dtype=F64)
    with torch.no_grad():
        balancer.log_vars.copy_(torch.tensor([0.3, -0.5], dtype=F64))
    r1, r2 = x @ w + b1 - y1, x @ w + b2 - y2
    losses = {"a": (r1 ** 2).mean(), "b": (r2 ** 2).mean()}
    total = balancer.combine(losses)
    dw, db1, db2, ds = torch.autograd.grad(total, [w, b1, b2, balancer.log_vars])

    s1, s2, n = 0.3, -0.5, 6
    l1, l2 = losses["a"].item(), losses["b"].item()
    assert total.item() == pytest.approx(math.exp(-s1) * l1 + s1 + math.exp(-s2) * 2 * l2 + s2, rel=1e-14)
    xr1, xr2 = (x.T @ r1.detach()).tolist(), (x.T @ r2.detach()).tolist()  # d mean(r^2)/dw = 2/n x^T r
    want_dw = [math.exp(-s1) * 2 / n * a + math.exp(-s2) * 2 * 2 / n * b for a, b in zip(xr1, xr2)]
    assert dw.tolist() == pytest.approx(want_dw, rel=1e-12)
    assert db1.item() == pytest.approx(math.exp(-s1) * 2 * r1.mean().item(), rel=1e-12)
    assert db2.item() == pytest.approx(math.exp(-s2) * 2 * 2 * r2.mean().item(), rel=1e-12)
    assert ds.tolist() == pytest.approx([1 - math.exp(-s1) * l1, 1 - math.exp(-s2) * 2 * l2], rel=1e-12)
    assert balancer.task_weights() == pytest.approx({"a": math.exp(-s1), "b": 2 * math.exp(-s2)}, rel=1e-12)

    fresh = UncertaintyWeighting(BalancingConfig("uncertainty"), ["a", "b"], dtype=F64)
    fresh.load_state_dict(balancer.state_dict())
    assert torch.equal(fresh.log_vars, balancer.log_vars)


# ---- dynamic weight averaging ----
def feed(balancer, window, start_step):
    """Feed one window's scripted losses: steps -> micro-batches of {task: loss}."""
    for step, micro_batches in enumerate(window, start=start_step + 1):
        for losses in micro_batches:
            balancer.observe({t: torch.tensor(v, dtype=F64) for t, v in losses.items()})
        balancer.step_end(step, False, reduce=lambda t: t)


def dwa_reference(means, temperature):
    """Per window k: 1 for k < 2, else K exp(r_t/T) / sum_i exp(r_i/T), r_t = L_t(k-1) / L_t(k-2)."""
    weights = []
    for k in range(len(means) + 1):
        if k < 2:
            weights.append([1.0] * len(means[0]))
            continue
        e = [math.exp(means[k - 1][t] / means[k - 2][t] / temperature) for t in range(len(means[0]))]
        weights.append([len(e) * v / sum(e) for v in e])
    return weights


def test_dwa_weights_over_scripted_window_losses():
    # 4 windows of 2 steps; the second step of each has 2 micro-batches; "b" is missing from one
    # micro-batch of window 1 (its mean is over the micro-batches that have it)
    script = [
        [[{"a": 2.0, "b": 1.0, "c": 3.0}], [{"a": 2.0, "b": 1.0, "c": 3.0}, {"a": 2.0, "b": 1.0, "c": 3.0}]],
        [[{"a": 1.0, "b": 0.9, "c": 2.4}], [{"a": 1.0, "c": 2.4}, {"a": 1.0, "b": 0.9, "c": 2.4}]],
        [[{"a": 0.9, "b": 0.3, "c": 2.3}], [{"a": 0.3, "b": 0.3, "c": 2.3}, {"a": 0.6, "b": 0.3, "c": 2.3}]],
        [[{"a": 0.5, "b": 0.3, "c": 2.0}], [{"a": 0.5, "b": 0.3, "c": 2.0}, {"a": 0.5, "b": 0.3, "c": 2.0}]],
    ]
    means = [[2.0, 1.0, 3.0], [1.0, 0.9, 2.4], [0.6, 0.3, 2.3], [0.5, 0.3, 2.0]]
    want = dwa_reference(means, temperature=2.0)
    balancer = DynamicWeightAverage(BalancingConfig("dwa", temperature=2.0, window=2), ["a", "b", "c"])
    seen = [balancer.dynamic_weights()]
    for window in script:
        feed(balancer, window, start_step=2 * (len(seen) - 1))
        seen.append(balancer.dynamic_weights())
    for got, expected in zip(seen, want):
        assert got == pytest.approx(expected, rel=1e-12)
    assert seen[2] != pytest.approx([1.0, 1.0, 1.0])  # the scripted losses do move the weights
    losses = {t: torch.tensor(v, dtype=F64) for t, v in zip("abc", (0.7, 0.2, 1.5))}
    assert balancer.combine(losses).item() == pytest.approx(sum(w * v for w, v in zip(want[-1], (0.7, 0.2, 1.5))))


def test_dwa_epoch_windows_and_a_resume_mid_window():
    config = BalancingConfig("dwa", temperature=1.0, window="epoch")
    whole, part = (DynamicWeightAverage(config, ["a", "b"]) for _ in range(2))
    losses = [{"a": 1.0 / (s + 1), "b": 1.0 / (s + 1) ** 0.5} for s in range(9)]
    for name, balancer in (("whole", whole), ("part", part)):
        for step, row in enumerate(losses[:5], start=1):
            balancer.observe({t: torch.tensor(v, dtype=F64) for t, v in row.items()})
            balancer.step_end(step, step % 3 == 0, reduce=lambda t: t)  # an epoch: 3 steps
    resumed = DynamicWeightAverage(config, ["a", "b"])
    resumed.load_state_dict(part.state_dict())  # after step 5: window 1 half done
    for balancer in (whole, resumed):
        for step, row in enumerate(losses[5:], start=6):
            balancer.observe({t: torch.tensor(v, dtype=F64) for t, v in row.items()})
            balancer.step_end(step, step % 3 == 0, reduce=lambda t: t)
    means = [[sum(r[t] for r in losses[i:i + 3]) / 3 for t in "ab"] for i in (0, 3, 6)]
    assert whole.dynamic_weights() == pytest.approx(dwa_reference(means, 1.0)[3], rel=1e-12)
    assert resumed.dynamic_weights() == whole.dynamic_weights()
    with pytest.raises(ValueError, match="method 'dwa' over tasks"):
        DynamicWeightAverage(config, ["a", "c"]).load_state_dict(whole.state_dict())


# ---- PCGrad ----
def test_pcgrad_two_conflicting_gradients_by_hand():
    # g1.g2 = -1: g1 -> g1 + g2 / 2 = (0.5, 0.5), g2 -> g2 + g1 = (0, 1); the sum (0.5, 1.5)
    total = project_conflicting(torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64), [[1], [0]])
    assert total.tolist() == pytest.approx([0.5, 1.5], abs=1e-15)


def test_pcgrad_leaves_non_conflicting_gradients_unchanged():
    grads = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    orders = draw_orders(3, torch.Generator().manual_seed(0))
    assert torch.equal(project_conflicting(grads, orders), grads.sum(0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcgrad_three_conflicting_gradients_match_the_reference(seed):
    g = torch.Generator().manual_seed(100 + seed)
    base = torch.randn(5, generator=g, dtype=F64)
    grads = torch.stack([base, -base + 0.3 * torch.randn(5, generator=g, dtype=F64),
                         torch.randn(5, generator=g, dtype=F64)])
    assert (grads[0] @ grads[1]).item() < 0  # at least one pair conflicts
    orders = draw_orders(3, torch.Generator().manual_seed(seed))
    assert all(sorted(o) == [j for j in range(3) if j != i] for i, o in enumerate(orders))
    assert draw_orders(3, torch.Generator().manual_seed(seed)) == orders  # seeded: reproducible
    got = project_conflicting(grads, orders)
    assert got.tolist() == pytest.approx(pcgrad_reference(grads.tolist(), orders), rel=1e-12, abs=1e-14)
    assert not torch.allclose(got, grads.sum(0))


def test_pcgrad_order_matters_and_every_order_matches_the_reference():
    grads = torch.tensor([[1.0, 0.2, 0.0], [-0.8, 1.0, 0.1], [-0.3, -1.0, 0.5]], dtype=F64)
    results = set()
    for perms in itertools.product(*[list(itertools.permutations([j for j in range(3) if j != i])) for i in range(3)]):
        got = project_conflicting(grads, perms)
        assert got.tolist() == pytest.approx(pcgrad_reference(grads.tolist(), perms), rel=1e-12, abs=1e-14)
        results.add(tuple(round(v, 9) for v in got.tolist()))
    assert len(results) > 1


def test_task_gradients_project_shared_parameters_and_keep_each_head_own():
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 4).double()
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(4, 2).double() for t in ("a", "b", "c")})
    params = list(shared.parameters()) + [p for t in ("a", "b", "c") for p in heads[t].parameters()]
    heads["b"].load_state_dict(heads["a"].state_dict())  # "b": "a"'s head with the opposite labels (conflicts)
    batches = []
    for _ in range(2):
        y = {t: torch.randint(0, 2, (5,)) for t in "ac"}
        batches.append((torch.randn(5, 3, dtype=F64), y | {"b": 1 - y["a"]}))

    def losses(x, y):
        h = torch.tanh(shared(x))
        return {t: torch.nn.functional.cross_entropy(heads[t](h), y[t]) for t in "abc"}

    collector = TaskGradients(["a", "b", "c"])
    for x, y in batches:  # two micro-batches of one step, each scaled by 1/2
        collector.accumulate({t: v / 2 for t, v in losses(x, y).items()}, params)
    orders = [[2, 1], [0, 2], [1, 0]]
    collector.apply(params, orders, mean=lambda t: t)
    assert collector.grads == {}

    # independent: each task's gradient of its mean loss over both micro-batches
    per_task = {t: torch.autograd.grad(sum(losses(x, y)[t] for x, y in batches) / 2, params, allow_unused=True)
                for t in "abc"}
    flat = [torch.cat([per_task[t][k].reshape(-1) for k in (0, 1)]).tolist() for t in "abc"]
    want_shared = pcgrad_reference(flat, orders)
    got_shared = torch.cat([params[0].grad.reshape(-1), params[1].grad.reshape(-1)]).tolist()
    assert got_shared == pytest.approx(want_shared, rel=1e-10, abs=1e-13)
    assert not torch.allclose(torch.tensor(got_shared), torch.tensor(flat).sum(0))  # some pair conflicted
    for n, t in enumerate("abc"):  # each head: its own task's gradient, untouched
        for k in (2 + 2 * n, 3 + 2 * n):
            assert torch.allclose(params[k].grad, per_task[t][k], rtol=1e-12, atol=1e-15)
