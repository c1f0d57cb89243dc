"""Asynchronous convergence (sift_ds.async_convergence), in process: the distillation loss and its
gradients against a float64 hand-written reference, the convergence rule on scripted metric sequences,
the one-line refusals of bad settings, and the two teachers giving the same outputs."""
import math

import pytest
import torch
from torch import nn

from sift_ds.async_convergence import (AsyncConvergence, AsyncConvergenceError, ConvergenceRule, TaskSpec,
                                       distill_share, from_dict, kd_loss)
from sift_ds.async_convergence.teachers import cpu_weights


def kd_reference(student, teacher, T):
    """float64 T^2 * mean over rows of sum_c p_t (log p_t - log p_s), and its gradient in the student
    logits, T * (p_s - p_t) / rows (Hinton et al. 2015, section 2.1)."""
    s, t = student.double().reshape(-1, student.shape[-1]), teacher.double().reshape(-1, teacher.shape[-1])
    log_ps = s / T - torch.logsumexp(s / T, -1, keepdim=True)
    log_pt = t / T - torch.logsumexp(t / T, -1, keepdim=True)
    rows = s.shape[0]
    loss = T * T * (log_pt.exp() * (log_pt - log_ps)).sum() / rows
    grad = T * (log_ps.exp() - log_pt.exp()) / rows
    return loss, grad.reshape(student.shape)


@pytest.mark.parametrize("T,shape", [(1.0, (6, 3)), (2.0, (4, 5, 7)), (4.5, (9, 2))])
def test_kd_loss_and_gradient_match_float64(T, shape):
    g = torch.Generator().manual_seed(len(shape) + int(T))
    student = (torch.randn(shape, generator=g) * 3).requires_grad_(True)
    teacher = torch.randn(shape, generator=g) * 3
    loss = kd_loss(student, teacher, T)
    loss.backward()
    ref_loss, ref_grad = kd_reference(student.detach(), teacher, T)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(student.grad.double(), ref_grad, rtol=1e-4, atol=1e-7)
    assert kd_loss(teacher.clone().requires_grad_(True), teacher, T).item() == pytest.approx(0, abs=1e-6)


def test_distill_share_blends_linearly():
    assert distill_share(10, None, 4) == 0
    assert distill_share(9, 10, 4) == 0
    assert [distill_share(s, 10, 4) for s in (10, 11, 12, 13, 14)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert distill_share(10, 10, 0) == 1.0


def run_rule(values, **spec):
    rule = ConvergenceRule(TaskSpec(name="t", **spec))
    outcomes = [rule.observe(10 * (i + 1), v) for i, v in enumerate(values)]
    return rule, outcomes


def test_patience_counts_evaluations_without_improvement_in_a_row():
    rule, outcomes = run_rule([0.5, 0.6, 0.55, 0.7, 0.7, 0.69, 0.71], patience=2)
    assert outcomes == ["improved", "improved", "waiting", "improved", "waiting", "converged", "done"]
    assert (rule.best, rule.best_step, rule.converged_step) == (0.7, 40, 60)


def test_min_delta_and_ties_in_both_directions():
    # max: a gain of exactly min_delta (or a tie) is no improvement; more than it is.
    _, outcomes = run_rule([1.0, 1.5, 1.5, 2.01], patience=3, min_delta=0.5)
    assert outcomes == ["improved", "waiting", "waiting", "improved"]
    # min: lower by more than min_delta improves.
    rule, outcomes = run_rule([3.0, 2.95, 2.8, 2.8, 2.79], mode="min", min_delta=0.1, patience=2)
    assert outcomes == ["improved", "waiting", "improved", "waiting", "converged"]
    assert (rule.best, rule.best_step, rule.converged_step) == (2.8, 30, 50)
    # a worse value under "min" is larger.
    _, outcomes = run_rule([1.0, 2.0], mode="min", patience=1)
    assert outcomes == ["improved", "converged"]


def test_rule_state_round_trips():
    rule, _ = run_rule([0.1, 0.3, 0.2], patience=3)
    other = ConvergenceRule(rule.spec)
    other.load_state_dict(rule.state_dict())
    assert [other.observe(40, 0.25), other.observe(50, 0.2)] == ["waiting", "converged"]


@pytest.mark.parametrize("settings,message", [
    ({"tasks": {"a": {"patience": 0}}}, "async_convergence: tasks.a.patience must be >= 1, got 0"),
    ({"tasks": {"a": {"mode": "up"}}}, "async_convergence: tasks.a.mode must be 'max' or 'min', got 'up'"),
    ({"tasks": {"a": {"temperature": 0}}}, "async_convergence: tasks.a.temperature must be > 0, got 0"),
    ({"tasks": {"a": {"patients": 2}}}, "async_convergence: tasks.a.patients: unknown key"),
    ({"tasks": {"a": {"blend_steps": 1.5}}}, "async_convergence: tasks.a.blend_steps must be an integer, got 1.5"),
    ({"tasks": {}}, "async_convergence: tasks must name at least one task"),
    ({"tasks": {"a": {}}, "teacher": "copy"}, "async_convergence: teacher must be 'frozen' or 'cached', got 'copy'"),
    ({"tasks": {"a": {}}, "teachers": "frozen"}, "async_convergence: teachers: unknown key"),
])
def test_bad_settings_are_one_line_naming_the_key(settings, message):
    with pytest.raises(AsyncConvergenceError) as err:
        from_dict(settings)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_unknown_task_and_missing_metric_are_refused():
    produced = {"a": ["accuracy", "loss"], "b": ["accuracy", "loss"]}
    with pytest.raises(AsyncConvergenceError, match=r"^async_convergence: tasks.c: unknown task 'c' \(the model's "
                                                    r"tasks: a, b\)$"):
        from_dict({"tasks": {"c": {}}}).check(["a", "b"], produced)
    with pytest.raises(AsyncConvergenceError, match=r"^async_convergence: tasks.b.metric: the evaluation does not "
                                                    r"produce 'f1' for 'b' \(it produces: accuracy, loss\)$"):
        from_dict({"tasks": {"b": {"metric": "f1"}}}).check(["a", "b"], produced)


class TwoHeads(nn.Module):
    """A shared encoder with a sequence head ("seq", 3 classes) and a token head ("tok", 4 classes)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed, self.body = nn.Embedding(20, 8), nn.Linear(8, 8)
        self.seq, self.tok = nn.Linear(8, 3), nn.Linear(8, 4)

    def forward(self, input_ids):
        h = torch.tanh(self.body(self.embed(input_ids)))
        return {"seq": self.seq(h.mean(1)), "tok": self.tok(h)}


def logits_of(module, inputs):
    return module(inputs["input_ids"])


def make_controller(model, teacher, data, **task):
    def copy_model(weights):
        clone = TwoHeads()
        clone.load_state_dict(weights)
        return clone

    def batches():
        for start in range(0, len(data), 4):
            yield {"input_ids": data[start:start + 4]}, torch.arange(start, min(start + 4, len(data)))

    config = {"teacher": teacher, "tasks": {"seq": {"patience": 1, **task}, "tok": {"patience": 5}}}
    return AsyncConvergence(config, logits_of, copy_model, batches)


def train_steps(model, steps, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1 * steps)


def test_cached_logits_equal_the_frozen_copy_and_state_round_trips():
    data = torch.randint(0, 20, (10, 5), generator=torch.Generator().manual_seed(1))
    model = TwoHeads()
    controllers = {t: make_controller(model, t, data) for t in ("frozen", "cached")}
    best = cpu_weights(model)
    for c in controllers.values():
        assert c.observe(0, {"seq": {"accuracy": 0.9}, "tok": {"accuracy": 0.1}}, lambda: cpu_weights(model)) == []
    train_steps(model, 1, seed=2)  # the model moves on; the teacher must stay at the best point
    for c in controllers.values():
        assert c.observe(5, {"seq": {"accuracy": 0.8}, "tok": {"accuracy": 0.2}}, lambda: cpu_weights(model)) == ["seq"]
        assert c.telemetry(5)["seq"] == {"state": "distilling", "converged_step": 5, "best": 0.9, "best_step": 0,
                                         "distill_share": 1.0}
    reference = TwoHeads()
    reference.load_state_dict(best)
    index = torch.tensor([7, 2, 9])
    inputs = {"input_ids": data[index]}
    expected = reference(data[index])["seq"]
    like = torch.zeros(())
    frozen = controllers["frozen"].teacher_logits("seq", inputs, like)
    cached = controllers["cached"].teacher_logits("seq", inputs, like, index)
    torch.testing.assert_close(frozen, expected.detach(), rtol=0, atol=0)
    torch.testing.assert_close(cached, frozen, rtol=1e-6, atol=1e-6)
    # the cached teacher keeps no weights once its cache exists; the frozen one keeps the best step's only
    assert list(controllers["cached"].snapshots) == [5] and list(controllers["frozen"].snapshots) == [0, 5]
    for teacher, c in controllers.items():
        restored = make_controller(TwoHeads(seed=3), teacher, data)
        restored.load_state_dict(c.state_dict())
        again = restored.teacher_logits("seq", inputs, like, index)
        torch.testing.assert_close(again, frozen, rtol=1e-6, atol=1e-6)


def test_loss_switches_to_distillation_and_blends():
    data = torch.randint(0, 20, (8, 5), generator=torch.Generator().manual_seed(4))
    model = TwoHeads()
    c = make_controller(model, "frozen", data, blend_steps=2, kd_weight=0.5, temperature=3.0)
    c.observe(0, {"seq": {"accuracy": 0.9}, "tok": {"accuracy": 0.1}}, lambda: cpu_weights(model))
    train_steps(model, 1, seed=5)
    c.observe(4, {"seq": {"accuracy": 0.5}, "tok": {"accuracy": 0.2}}, lambda: cpu_weights(model))
    inputs = {"input_ids": data}
    out = model(data)
    labels = {"seq": torch.tensor([0, 1, 2, 0, 1, -100, 2, 0]), "tok": torch.randint(0, 4, (8, 5))}
    teacher = make_controller(model, "frozen", data).copy_model(c.snapshots[0])(data)["seq"].detach()
    rows = labels["seq"] != -100
    ce = nn.functional.cross_entropy(out["seq"].double(), labels["seq"], ignore_index=-100)
    kd, _ = kd_reference(out["seq"][rows].detach(), teacher[rows], 3.0)
    for step, share in ((3, 0.0), (4, 0.5), (5, 1.0), (9, 1.0)):
        total, per_task = c.loss(step, out, labels, inputs)
        expected = (1 - share) * ce + share * 0.5 * kd
        assert per_task["seq"].item() == pytest.approx(expected.item(), rel=1e-5), step
        tok = nn.functional.cross_entropy(out["tok"].reshape(-1, 4).double(), labels["tok"].reshape(-1))
        assert total.item() == pytest.approx((expected + tok).item(), rel=1e-5)
    assert math.isfinite(c.loss(5, out, labels, inputs)[0].item())
