"""``sift_ds.hf.SiftTrainer`` on 2 CPU ranks (gloo): Trainer's own DDP with bf16 autocast, and a
DeepSpeed ZeRO-2 config passed as ``TrainingArguments.deepspeed``. One run per configuration (6
steps, a resume from the step-3 checkpoint) that every test of it reads; the script checks each
selection against an independent float64 top-k of a direct HF forward (tests/dist_scripts/hf_trainer.py).
And the example script launch/run_mlm_sift.py, for two steps."""
import json
import math
import os
import subprocess
import sys

import pytest

from launcher import REPO, clean_env, run_deepspeed

pytest.importorskip("accelerate", reason="SiftTrainer needs the hf extra (accelerate)")

SCRIPT = os.path.join(REPO, "tests", "dist_scripts", "hf_trainer.py")
with open(os.path.join(REPO, "ds_configs", "hf", "zero2_sift.json"), encoding="utf-8") as _f:
    SHIPPED_SIFT = json.load(_f)["sift"]
STEPS, GAS, RANKS = 6, 2, 2


@pytest.fixture(scope="module", params=[-1, 2], ids=["ddp", "zero2"])
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"hf_zero{request.param}")
    run_deepspeed(SCRIPT, ["--zero", request.param, "--out", out], env={"TENSORBOARD_LOGGING_DIR": str(out / "tb")})
    return request.param, out, [json.load(open(out / f"rank{r}.json")) for r in range(RANKS)]


def test_kept_rows_are_the_global_topk_of_hf_scores(run):
    _, _, ranks = run
    for res in ranks:
        assert res["gross"] == 8  # per_device_train_batch_size 4 / keep_ratio 0.5
        records = res["records"]
        assert len(records) == STEPS * GAS and all(r["rows"] == 4 for r in records)
        assert [r["warmup"] for r in records] == [True] * GAS + [False] * (STEPS - 1) * GAS  # warmup_steps 1
        scored = [r for r in records if not r["warmup"]]
        assert all(r["is_topk"] and r["trained_union_is_topk"] and r["rows_match"] for r in scored)
        assert max(r["score_err"] for r in scored) < 1e-4


def test_num_items_in_batch_counts_the_kept_rows(run):
    _, _, ranks = run
    for res in ranks:
        counted = [r for r in res["records"] if "num_items" in r]
        assert len(counted) == STEPS
        assert all(r["num_items"] == r["labelled_all_ranks"] for r in counted)


def test_sift_statistics_in_the_log_history_and_tensorboard(run):
    _, out, ranks = run
    logs = [h for h in ranks[0]["log_history"] if "loss" in h]
    assert [h["step"] for h in logs] == [2, 4, 6]  # logging_steps 2
    for h in logs:
        assert math.isfinite(h["loss"]) and h["sift/kept_fraction"] == 0.5 and h["sift/keep_ratio"] == 0.5
        assert 0 < h["sift/selection_share"] < 1
    assert logs[0]["sift/warmup"] == 0.5 and logs[1]["sift/warmup"] == 0.0  # step 0 of the first window
    assert all(h["sift/score_kept_mean"] > h["sift/score_dropped_mean"] for h in logs[1:])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for name in os.listdir(out / "tb"):
        events = EventAccumulator(str(out / "tb" / name))
        events.Reload()
        tags |= set(events.Tags()["scalars"])
    assert {"train/loss", "train/sift/score_kept_mean", "train/sift/score_dropped_mean"} <= tags


def test_resume_from_a_trainer_checkpoint_selects_the_same_rows(run):
    _, _, ranks = run
    for res in ranks:
        tail = res["records"][3 * GAS:]
        assert [(r["step"], r["indices"]) for r in res["resumed"]] == [(r["step"], r["indices"]) for r in tail]
        first = {h["step"]: h["loss"] for h in res["log_history"] if "loss" in h}
        again = {h["step"]: h["loss"] for h in res["resumed_log_history"] if "loss" in h}
        assert again[6] == pytest.approx(first[6], rel=1e-5)  # the same window of steps 5-6, same rows


def test_deepspeed_never_sees_the_sift_section(run):
    zero, _, ranks = run
    assert all(res["ds_has_sift"] is (False if zero >= 0 else None) for res in ranks)


def test_run_mlm_example_trains_with_sift(tmp_path):
    """launch/run_mlm_sift.py (one process, no DeepSpeed) with the "sift" section of the shipped
    ds_configs/hf/zero2_sift.json (selection from step 2): 2 steps, the sift/* keys in its logs."""
    cmd = [sys.executable, os.path.join(REPO, "launch", "run_mlm_sift.py"), "--config_name",
           os.path.join(REPO, "ds_configs", "models", "bert_L4_H128.json"), "--tokenizer_name",
           os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096"), "--output_dir", str(tmp_path),
           "--per_device_train_batch_size", "4", "--max_steps", "2", "--logging_steps", "1", "--max_seq_length", "64",
           "--use_cpu", "--report_to", "none", "--max_eval_samples", "8",
           "--sift_config", json.dumps(dict(SHIPPED_SIFT, warmup_steps=1, kernel="torch"))]
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = json.load(open(tmp_path / "checkpoint-2" / "trainer_state.json"))
    logs = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2] and all(h["sift/kept_fraction"] == 0.5 for h in logs)
    assert math.isfinite(json.load(open(tmp_path / "all_results.json"))["eval_loss"])


def test_the_shipped_trainer_config_gives_its_sift_section_and_hides_it_from_deepspeed():
    """ds_configs/hf/zero2_sift.json (Trainer fills its "auto" values): its "sift" section is what
    sift_config_for reads, and the config DeepSpeed would get has none."""
    from types import SimpleNamespace

    from sift_ds.config import SiftConfig, load_ds_config
    from sift_ds.hf import sift_config_for
    path = os.path.join(REPO, "ds_configs", "hf", "zero2_sift.json")
    shipped = load_ds_config(path)
    handed = SimpleNamespace(config=dict(shipped))
    cfg = sift_config_for(None, SimpleNamespace(deepspeed=path, hf_deepspeed_config=handed))
    assert cfg == SiftConfig(**shipped["sift"]) and "sift" not in handed.config
    assert shipped["train_micro_batch_size_per_gpu"] == "auto"  # Trainer's per_device_train_batch_size
