"""The loss-balancing baselines in AsyncConvergenceTrainer, on the tiny three-head BERT of
multitask_tiny: each method's run logs <task>_weight; DWA's logged weights follow from the logged
window losses and a resume mid-window logs exactly what the uninterrupted run logged; uncertainty
weighting's log-variances are trained by the Trainer's optimizer and resumed exactly; a PCGrad step's
gradients match a float64 reference, and PCGrad trains beside a task's switch to distillation."""
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import default_data_collator

from launcher import REPO, clean_env, free_port
from multitask_tiny import EVERY, STEPS, Rows, ThreeHeads, logged, three_runs, trainer
from sift_ds.async_convergence import AsyncConvergenceError
from sift_ds.async_convergence.balancing_pcgrad import draw_orders
from sift_ds.async_convergence.hf import STATE_FILE, AsyncConvergenceTrainer
from test_balancing import dwa_reference, pcgrad_reference

TASKS = ("first", "parity", "tag")
SCRIPT = os.path.join(REPO, "tests", "dist_scripts", "balancing_hf.py")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_logs(history):
    return [r for r in logged(history) if "loss" in r]


def weights(record):
    return [record[f"{t}_weight"] for t in TASKS]


def test_uniform_without_watched_tasks_logs_unit_weights(tmp_path):
    run = trainer(tmp_path, "frozen", watch=False)
    run.train()
    logs = train_logs(run.state.log_history)
    assert len(logs) == STEPS // EVERY and all(weights(r) == [1.0, 1.0, 1.0] for r in logs)
    assert all("first_distill_share" not in r for r in logs)  # nothing watched, nothing distilled


def test_dwa_weights_follow_the_window_losses_and_resume_exactly_mid_window(tmp_path):
    settings = {"method": "dwa", "temperature": 2.0, "window": EVERY}  # a window: one logging interval
    whole, resumed, run = three_runs(tmp_path, "frozen", stop_at=2 * EVERY + 2, watch=False,  # in window 2
                                     balancing=settings)
    # the Trainer's own running "loss" since the last log is not in its checkpoints: left out here
    without_loss = lambda records: [{k: v for k, v in r.items() if k != "loss"} for r in records]
    assert without_loss(resumed) == without_loss(whole) and any("first_weight" in r for r in whole)
    logs = train_logs(run.state.log_history)
    means = [[r[f"{t}_loss"] for t in TASKS] for r in logs]  # each log: the mean over one window
    want = dwa_reference(means, 2.0)  # want[k]: the weights of window k, logged at its start
    assert weights(logs[0]) == [1.0, 1.0, 1.0]
    for k, r in enumerate(logs[1:], start=2):
        assert weights(r) == pytest.approx(want[k], rel=1e-9)
    assert weights(logs[-1]) != pytest.approx([1.0, 1.0, 1.0])


def test_uncertainty_trains_its_log_variances_and_resumes_exactly(tmp_path):
    stop_at = 2 * EVERY
    whole, resumed, run = three_runs(tmp_path, "frozen", stop_at=stop_at, watch=False,
                                     balancing={"method": "uncertainty"})
    assert resumed == whole
    log_vars = run.balancer.log_vars
    groups = [g for g in run.optimizer.param_groups if any(p is log_vars for p in g["params"])]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    logs = train_logs(run.state.log_history)
    assert weights(logs[-1]) == pytest.approx(torch.exp(-log_vars.detach()).tolist(), rel=1e-6)
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L: "first" (3 classes, L ~ ln 3 > 1) lowers its weight at
    # first, the two binary tasks (L ~ ln 2 < 1) raise theirs
    first, parity, tag = weights(logs[0])
    assert first < 1 < parity and tag > 1
    saved = torch.load(tmp_path / "resumed" / f"checkpoint-{stop_at}" / STATE_FILE, weights_only=True)["balancing"]
    at_stop = next(r for r in logs if r["step"] == stop_at)
    assert torch.exp(-saved["log_vars"]).tolist() == pytest.approx(weights(at_stop), rel=1e-6)


def test_pcgrad_step_of_two_micro_batches_matches_a_float64_reference(tmp_path):
    """Gradient accumulation over 2 micro-batches: the per-task gradients summed, projected once."""
    run = trainer(tmp_path, "frozen", balancing={"method": "pcgrad", "seed": 3},
                  tasks={"first": {"loss_weight": 0.5}})
    model = run.model
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    batches = [default_data_collator([run.train_dataset[i] for i in range(4 * r, 4 * r + 4)]) for r in range(2)]
    run.current_gradient_accumulation_steps = 2
    for n, batch in enumerate(batches):
        run.accelerator.gradient_state._set_sync_gradients(n == 1)  # as the Trainer's loop does
        run.training_step(model, batch)
        assert all(p.grad is None for p in model.parameters()) == (n == 0)
    _, grads = reference_task_grads(copy.deepcopy(model), batches, {"first": 0.5})
    check_pcgrad([p.grad for p in model.parameters()], grads, seed=3)


def reference_task_grads(model, batches, scale=None):
    """In float64: each task's loss and its gradient per parameter (None: not reached), averaged over
    ``batches`` (the ranks' micro-batches); ``scale``: static weights."""
    model = model.double()
    params = list(model.parameters())
    losses, grads = {t: 0.0 for t in TASKS}, {t: [None] * len(params) for t in TASKS}
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
        for t in TASKS:
            loss = F.cross_entropy(logits[t].reshape(-1, logits[t].shape[-1]), batch[f"{t}_labels"].reshape(-1))
            losses[t] += loss.item() / len(batches)
            got = torch.autograd.grad((scale or {}).get(t, 1.0) * loss / len(batches), params, retain_graph=True,
                                      allow_unused=True)
            grads[t] = [g if h is None else (h if g is None else g + h) for g, h in zip(got, grads[t])]
    return losses, grads


def check_pcgrad(got, grads, seed):
    """``got``: the step's gradient per parameter; ``grads``: the reference per-task gradients."""
    n = len(got)
    shared = [k for k in range(n) if sum(grads[t][k] is not None for t in TASKS) > 1]
    flat = [torch.cat([grads[t][k].reshape(-1) for k in shared]).tolist() for t in TASKS]
    want = torch.tensor(pcgrad_reference(flat, draw_orders(3, torch.Generator().manual_seed(seed))), dtype=torch.float64)
    assert torch.allclose(torch.cat([got[k].reshape(-1).double() for k in shared]), want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(want, torch.tensor(flat, dtype=torch.float64).sum(0), rtol=1e-3, atol=1e-5)  # projected
    for k in set(range(n)) - set(shared):  # the heads: their own task's gradient
        own = next(grads[t][k] for t in TASKS if grads[t][k] is not None)
        assert torch.allclose(got[k].reshape(-1).double(), own.reshape(-1), rtol=1e-4, atol=1e-6)


def test_two_ddp_ranks_balance_the_losses_and_gradients_of_both(tmp_path):
    """One step per method on 2 DDP ranks (one torchrun launch), each rank on its own rows: PCGrad
    projects the per-task gradients averaged over both ranks, uncertainty's log-variance gradients
    and DWA's window means are over both ranks; every rank ends with the same values."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           SCRIPT, "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["world_size"] == 2
    result = ranks[0]
    model = ThreeHeads()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    rows = Rows(40, 1)
    batches = [default_data_collator([rows[i] for i in range(4 * r, 4 * r + 4)]) for r in range(2)]
    losses, grads = reference_task_grads(model, batches)
    check_pcgrad([torch.tensor(g) for g in result["pcgrad"]], grads, seed=3)
    assert result["uncertainty"]["log_vars"] == pytest.approx([1 - losses[t] for t in TASKS], rel=1e-5)
    embeddings = sum(grads[t][0] for t in TASKS).reshape(-1)
    assert torch.allclose(torch.tensor(result["uncertainty"]["embeddings"], dtype=torch.float64), embeddings,
                          rtol=1e-4, atol=1e-6)
    assert result["dwa"] == [pytest.approx([losses[t] for t in TASKS], rel=1e-5)]


def test_pcgrad_trains_beside_a_switch_to_distillation_and_resumes_exactly(tmp_path):
    whole, resumed, run = three_runs(tmp_path, "frozen", stop_at=3 * EVERY, balancing={"method": "pcgrad"})
    assert resumed == whole  # the task order's random state is restored
    logs = train_logs(run.state.log_history)
    assert [r["first_distill_share"] for r in logs] == [0.0, 0.0, 1.0, 1.0]
    assert all(weights(r) == [1.0, 1.0, 1.0] and math.isfinite(r["loss"]) for r in logs)
    assert logs[-1]["tag_loss"] < logs[0]["tag_loss"] / 2


@pytest.mark.parametrize("balancing,message", [
    ({"method": "gradnorm"}, r"^balancing: method must be one of uniform, uncertainty, dwa, pcgrad, got 'gradnorm'$"),
    ({"method": "dwa", "temperature": 0}, r"^balancing: temperature must be > 0, got 0$"),
    ({"method": "dwa", "window": 0}, r"^balancing: window must be 'epoch' or a number of steps >= 1, got 0$"),
    ({"method": "uncertainty", "window": 5}, r"^balancing: window: unknown key for method 'uncertainty' \(known: method\)$"),
])
def test_bad_balancing_settings_are_refused_at_construction(tmp_path, balancing, message):
    with pytest.raises(AsyncConvergenceError, match=message):
        trainer(tmp_path, "frozen", balancing=balancing, watch=False)


def test_uncertainty_with_an_own_optimizer_is_refused(tmp_path):
    base = trainer(tmp_path, "frozen", watch=False)
    optimizer = torch.optim.SGD(base.model.parameters(), lr=0.1)
    with pytest.raises(AsyncConvergenceError, match=r"^balancing: method 'uncertainty' trains its log-variances"):
        AsyncConvergenceTrainer(model=base.model, args=base.args, train_dataset=base.train_dataset,
                                eval_dataset=base.eval_dataset, data_collator=default_data_collator,
                                optimizers=(optimizer, None), balancing={"method": "uncertainty"})


def test_evaluations_are_needed_only_when_a_task_is_watched(tmp_path):
    base = trainer(tmp_path, "frozen", watch=False)
    args = copy.deepcopy(base.args)
    args.eval_strategy = "no"
    common = dict(model=base.model, args=args, train_dataset=base.train_dataset, data_collator=default_data_collator)
    assert AsyncConvergenceTrainer(**common, balancing={"method": "dwa"}).balancer.method == "dwa"
    with pytest.raises(AsyncConvergenceError, match=r"^AsyncConvergenceTrainer: eval_strategy: the convergence rules"):
        AsyncConvergenceTrainer(**common, async_convergence={"tasks": {"parity": {}}})
