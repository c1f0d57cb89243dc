"""Experiment tracking, offline (no network): one 2-rank DeepSpeed run of the pretraining job with
TensorBoard, CSV, wandb and Comet all enabled in its ds_config, and one SiftTrainer run reporting to
TensorBoard, wandb and Comet. Each tracker's own files are read back (tests/tracking_files.py) and
must hold the job's records -- loss, validation, SIFT's kept / dropped score means, selection share
and the fidelity probe -- as metrics.jsonl / Trainer's log history has them."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from launch_helpers import SCRIPT, load_cli, metrics, one_line_error, read_config, write_config
from launcher import REPO, clean_env, run_deepspeed
from tracking_files import comet_metrics, csv_scalars, same, tensorboard_scalars, wandb_history

pytest.importorskip("wandb", reason="the test extra (wandb) is not installed")
pytest.importorskip("comet_ml", reason="the test extra (comet-ml) is not installed")

KEYS = ("train_loss", "val_acc", "sift/score_kept_mean", "sift/score_dropped_mean", "sift/selection_share",
        "probe/spearman")
STEPS, GLOBAL_BATCH = 4, 32


def offline_env(tmp_path, **extra) -> dict:
    """wandb and Comet offline, their settings and caches under tmp_path, their servers' addresses on
    loopback (Comet resolves its server's name to log the host's address, even offline)."""
    home = tmp_path / "home"
    home.mkdir()
    return {"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(home), "WANDB_CACHE_DIR": str(home),
            "WANDB_DATA_DIR": str(home), "WANDB_DIR": "", "WANDB_BASE_URL": "http://127.0.0.1:9",
            "COMET_OFFLINE_DIRECTORY": "", "COMET_URL_OVERRIDE": "http://127.0.0.1:9/clientlib/", "HOME": str(home),
            **extra}


def monitors_config(tmp_path) -> dict:
    config = read_config("tiny_cpu_sift.json")
    config["csv_monitor"] = {"enabled": True, "output_path": "auto"}
    config["wandb"] = {"enabled": True, "project": "sift-test"}  # DeepSpeed's keys only: no output_path
    config["comet"] = {"enabled": True, "online": False, "samples_log_interval": 1}
    return config


def test_wandb_and_comet_sections_reach_deepspeed_as_written(tmp_path, monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    out = str(tmp_path / "run")
    plan = load_cli().resolve(["--ds_config", write_config(tmp_path / "cfg.json", monitors_config(tmp_path)),
                               "--output_dir", out, "--check_only"])
    assert plan.ds_config["wandb"] == {"enabled": True, "project": "sift-test"}
    assert plan.ds_config["comet"] == {"enabled": True, "online": False, "samples_log_interval": 1}
    assert plan.ds_config["csv_monitor"] == {"enabled": True, "output_path": os.path.join(out, "csv"), "job_name": "sift"}


@pytest.mark.parametrize("section, package", [("wandb", "wandb"), ("comet", "comet_ml"), ("tensorboard", "tensorboard")])
def test_a_tracker_without_its_package_is_one_line(tmp_path, monkeypatch, capsys, section, package):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find_spec(name, *a))
    err = one_line_error(capsys, ["--ds_config", write_config(tmp_path / "cfg.json", monitors_config(tmp_path)),
                                  "--output_dir", str(tmp_path / "run")])
    assert f"ds_config {section}.enabled needs the {package} package" in err


def test_every_deepspeed_monitor_receives_the_job_records(tmp_path):
    out = tmp_path / "run"
    config = monitors_config(tmp_path)
    config["scheduler"]["params"].update(total_num_steps="auto", warmup_num_steps=8)
    config["sift"]["selection_start_step"] = 2
    config["pretrain"].update(seq_len=32, vocab_size=1000, log_interval=2, eval_interval=4, save_interval=0,
                              cache_dir=str(tmp_path / "cache"))
    run_deepspeed(SCRIPT, ["--ds_config", write_config(tmp_path / "cfg.json", config), "--output_dir", out,
                           "--max_steps", STEPS], env={"DS_ACCELERATOR": "cpu", **offline_env(tmp_path)})
    records = metrics(out)
    assert [r["step"] for r in records] == [2, 4] and all(r["samples"] == r["step"] * GLOBAL_BATCH for r in records)
    assert records[-1]["sift/warmup"] == 0.0 and records[-1]["probe/spearman"] is not None

    def by(axis, key):
        return [(r[axis], r[key]) for r in records if r.get(key) is not None]

    board = tensorboard_scalars(out / "tensorboard" / "tiny_cpu_sift")
    tables = csv_scalars(out / "csv" / "sift")  # job_name: "sift" (SIFT on) where the section names none
    runs = wandb_history(out / "wandb")  # wandb's and Comet's files under the output directory
    comet = comet_metrics(out / "comet")
    for key in KEYS:
        tag = f"Pretrain/{key}"
        assert same(board[tag], by("step", key), rel=1e-6), (tag, board[tag])  # float32 on TensorBoard
        assert same(tables[tag.replace("/", "_")], by("step", key)), tag
        assert same(runs[tag], by("samples", key)), (tag, runs[tag])  # wandb and Comet: at the samples trained
        assert same(comet[tag], by("samples", key)), (tag, comet[tag])
    for history in (runs, comet):
        assert same(history["Pretrain/step"], [(r["samples"], r["step"]) for r in records])
        assert [s for s, _ in history["Train/Samples/lr"]] == [GLOBAL_BATCH * (i + 1) for i in range(STEPS)]


def test_sift_trainer_reports_to_every_integration(tmp_path):
    env = clean_env(**offline_env(tmp_path, WANDB_DIR=str(tmp_path), COMET_OFFLINE_DIRECTORY=str(tmp_path / "comet"),
                                  COMET_START_ONLINE="false", TENSORBOARD_LOGGING_DIR=str(tmp_path / "tb")))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "dist_scripts", "hf_report_to.py"), "--out",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(tmp_path / "log_history.json") as f:
        history = json.load(f)
    train = [h for h in history if "loss" in h]
    evaluation = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in train] == [1, 2, 3, 4] and [h["step"] for h in evaluation] == [4]
    assert train[-1]["sift/warmup"] == 0.0 and -1 <= evaluation[0]["eval_probe/spearman"] <= 1

    board = tensorboard_scalars(tmp_path / "tb")
    runs = wandb_history(tmp_path)
    comet = comet_metrics(tmp_path / "comet")
    wanted = [(f"train/{k}", k, train) for k in ("loss", "sift/score_kept_mean", "sift/score_dropped_mean",
                                                 "sift/selection_share", "sift/kept_fraction")]
    wanted += [(f"eval/{k}", f"eval_{k}", evaluation) for k in ("loss", "probe/spearman", "probe/top_half_overlap")]
    for tag, key, logs in wanted:
        want = [(h["step"], h[key]) for h in logs]
        assert same(board[tag], want), (tag, board[tag])
        assert same(comet[tag], want), (tag, comet[tag])
        assert [v for _, v in runs[tag]] == pytest.approx([v for _, v in want], nan_ok=True), tag  # wandb's own steps
