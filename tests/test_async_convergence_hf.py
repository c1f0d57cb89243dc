"""AsyncConvergenceTrainer (sift_ds.async_convergence.hf) on a tiny three-head BERT: per-task losses,
metrics and states in log_history, the switch at a scripted convergence, and a resume from a
checkpoint after (frozen teacher) or before (cached logits) the switch that logs exactly what the
uninterrupted run logged; then the same on 2 DDP ranks under torchrun."""
import json
import os
import subprocess
import sys

import pytest
import torch

from launcher import REPO, clean_env, free_port
from multitask_tiny import EVERY, STEPS, logged, three_runs, trainer
from sift_ds.async_convergence import AsyncConvergenceError

SCRIPT = os.path.join(REPO, "tests", "dist_scripts", "async_convergence_hf.py")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as each rank of a launched run has: on the shared 2 cores, more threads
    make the tiny model's steps about 8x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_frozen_teacher_switches_and_resumes_exactly_after_the_switch(tmp_path):
    whole, resumed, run = three_runs(tmp_path, "frozen", stop_at=3 * EVERY)
    assert resumed == whole and len(whole) == 2 * (STEPS // EVERY - 3)
    train_logs = [r for r in logged_all(run) if "loss" in r]
    assert [r["first_distill_share"] for r in train_logs] == [0.0, 0.0, 1.0, 1.0]  # converged at step 6, blend 2
    assert [r.get("first_converged_step") for r in train_logs] == [None, None, 2 * EVERY, 2 * EVERY]
    assert all(r["parity_distill_share"] == 0.0 and "parity_converged_step" not in r for r in train_logs)
    evals = [r for r in logged_all(run) if "eval_loss" in r]
    assert len(evals) == STEPS // EVERY
    for r in evals:
        assert r["eval_loss"] == pytest.approx(r["eval_first_loss"] + r["eval_parity_loss"] + r["eval_tag_loss"])
        assert all(0 <= r[f"eval_{t}_accuracy"] <= 1 for t in ("first", "parity", "tag"))
    # the frozen teacher is step 3's model; before the switch "first" trained on its labels
    rules = run.convergence.rules
    assert (rules["first"].best_step, rules["first"].converged_step, rules["parity"].converged_step) == (EVERY, 2 * EVERY, None)


def logged_all(run):
    return logged(run.state.log_history)


def test_cached_teacher_resumes_exactly_from_before_the_switch(tmp_path):
    whole, resumed, run = three_runs(tmp_path, "cached", stop_at=EVERY)
    assert resumed == whole
    assert set(run.convergence.caches) == {"first"} and run.convergence.caches["first"].shape == (40, 3)


@pytest.mark.parametrize("tasks,message", [
    ({"topic": {}}, r"^async_convergence: tasks.topic: unknown task 'topic' \(the model's tasks: first, parity, tag\)$"),
    ({"tag": {"metric": "f1"}}, r"^async_convergence: tasks.tag.metric: the evaluation does not produce 'f1'"),
    ({"tag": {"patience": 0}}, r"^async_convergence: tasks.tag.patience must be >= 1, got 0$"),
])
def test_bad_settings_are_refused_at_construction(tmp_path, tasks, message):
    with pytest.raises(AsyncConvergenceError, match=message):
        trainer(tmp_path, "frozen", tasks=tasks)


def test_two_ddp_ranks_resume_exactly(tmp_path):
    """Both teachers under Trainer's DDP on 2 ranks (one torchrun launch): stopped after the switch
    (frozen) or before it (cached), resumed, the same records as the uninterrupted run on each rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           SCRIPT, "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    for rank in ranks:
        assert rank["world_size"] == 2
        for teacher in ("frozen", "cached"):
            assert rank[teacher]["resumed"] == rank[teacher]["whole"] and rank[teacher]["whole"], teacher
            assert rank[teacher]["whole"][-2]["first_distill_share"] == 1.0
    assert ranks[0] == ranks[1]
