"""The pretraining job's ``--async_convergence`` (objective mlm+nsp): start-up refusals in one line, and
tiny 2-rank DeepSpeed runs with a scripted early convergence of NSP: the task states in metrics.jsonl,
the loss and SIFT's selection unchanged until the switch and changed after it, and a run resumed from
a checkpoint after the switch logging what the uninterrupted run logged."""
import json

import pytest

from launch_helpers import metrics, one_line_error, pretrain_2_ranks, small_config

STEPS, EVAL = 6, 2
# only the first evaluation improves (min_delta 1e6), so NSP converges at the second one, step 2 * EVAL
SCRIPTED = json.dumps({"tasks": {"nsp": {"metric": "loss", "mode": "min", "min_delta": 1e6, "patience": 1,
                                         "temperature": 2.0}}})


@pytest.mark.parametrize("extra,message", [
    (["--objective", "mlm"], "--async_convergence distils the next-sentence task: it needs --objective mlm+nsp, got mlm"),
    (["--eval_interval", "0"], "--async_convergence watches the periodic evaluations: --eval_interval 0 has none"),
])
def test_refusals_naming_the_option(tmp_path, capsys, extra, message):
    argv = ["--ds_config", small_config(tmp_path), "--objective", "mlm+nsp", "--eval_interval", "2",
            "--output_dir", str(tmp_path / "out"), "--check_only", "true", "--async_convergence", SCRIPTED, *extra]
    assert one_line_error(capsys, argv) == f"pretrain_bert.py: error: {message}"


@pytest.mark.parametrize("value,message", [
    ('{"tasks": {"sop": {}}}', "async_convergence: tasks.sop: unknown task 'sop' (the model's tasks: nsp)"),
    ('{"tasks": {"nsp": {"metric": "f1"}}}', "async_convergence: tasks.nsp.metric: the evaluation does not produce "
                                             "'f1' for 'nsp' (it produces: accuracy, loss)"),
    ('{"tasks": {"nsp": {"patience": 0}}}', "async_convergence: tasks.nsp.patience must be >= 1, got 0"),
    ('{"teacher": "cached", "tasks": {"nsp": {}}}', "async_convergence: teacher: the pretraining job distils from a "
                                                    "frozen copy ('frozen'); its batches carry no example index for 'cached'"),
    ('{"tasks": ', "--async_convergence: not valid JSON (Expecting value at line 1 column 11)"),
    ("missing.json", "--async_convergence missing.json: neither a JSON object nor a file"),
])
def test_bad_settings_are_one_line(tmp_path, capsys, value, message):
    argv = ["--ds_config", small_config(tmp_path), "--objective", "mlm+nsp", "--eval_interval", "2",
            "--output_dir", str(tmp_path / "out"), "--check_only", "true", "--async_convergence", value]
    assert one_line_error(capsys, argv) == f"pretrain_bert.py: error: {message}"


def run(tmp_path, name, *extra):
    out = tmp_path / name
    pretrain_2_ranks(["--ds_config", small_config(tmp_path, name=f"{name}.json"), "--objective", "mlm+nsp",
                      "--output_dir", out, "--max_steps", STEPS, "--eval_interval", EVAL, "--sift_warmup_steps", 1,
                      "--save_interval", 0, *extra])
    return {r["step"]: r for r in metrics(out)}


def test_nsp_distilled_after_a_scripted_convergence_composes_with_sift_and_resumes_exactly(tmp_path):
    plain = run(tmp_path, "plain")
    whole = run(tmp_path, "whole", "--async_convergence", SCRIPTED, "--save_interval", STEPS - 1)
    converged = 2 * EVAL
    for step, record in whole.items():
        state = "distilling" if step >= converged else "training"
        assert (record["nsp/state"], record["nsp/converged_step"]) == (state, converged if step >= converged else None)
        assert record["nsp/distill_share"] == (1.0 if step >= converged else 0.0)
        assert (record.get("val_nsp_loss") is not None) == (step % EVAL == 0)  # the job's NSP loss is evaluated
    assert whole[converged]["nsp/best_step"] == EVAL
    # until the switch the loss is the plain run's; from the step after it the NSP term is distilled; the
    # selection (its scores from the MLM head's early exit) is the plain run's up to that step
    selection = [k for k in plain[1] if k.startswith("sift/") and isinstance(plain[1][k], (int, float))
                 and not any(word in k for word in ("time", "share", "overhead"))]  # the scores, not the timing
    assert {"sift/score_kept_mean", "sift/score_dropped_mean", "sift/kept_fraction"} <= set(selection), selection
    for step in range(1, converged + 2):
        assert {k: whole[step][k] for k in selection} == {k: plain[step][k] for k in selection}, step
        if step <= converged:
            assert whole[step]["train_loss"] == plain[step]["train_loss"], step
    assert all(whole[s]["train_loss"] != plain[s]["train_loss"] for s in range(converged + 1, STEPS + 1))
    # a run resumed from the checkpoint after the switch (step 5): the records of the uninterrupted run
    resumed = run(tmp_path, "resumed", "--async_convergence", SCRIPTED, "--resume",
                  tmp_path / "whole" / "checkpoints" / f"global_step{STEPS - 1}")
    assert sorted(resumed) == [STEPS]
    for key in ("train_loss", "val_loss", "val_nsp_loss", "nsp/state", "nsp/converged_step", "nsp/best"):
        assert resumed[STEPS].get(key) == whole[STEPS].get(key), key
