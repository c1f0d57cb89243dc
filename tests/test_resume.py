"""Exact resume: a run stopped after a checkpoint and resumed reproduces the uninterrupted run's
losses step for step (real 2-rank DeepSpeed runs on the CPU); SIGTERM saves and exits cleanly."""
import os
import signal
import subprocess
import sys
import time

import pytest

from launch_helpers import SCRIPT, cpu_env, metrics, pretrain_2_ranks, small_config
from sift_ds.pretrain import checkpoint
from sift_ds.pretrain.corpus import default_corpus
from sift_ds.pretrain.tokenizer import batched_texts, train_wordpiece

STEPS, STOP = 8, 4


def latest_tag(output_dir) -> str:
    with open(os.path.join(output_dir, "checkpoints", "latest")) as f:
        return f.read().strip()


def test_resumed_run_matches_the_uninterrupted_run(tmp_path):
    # SIFT warm-up ends at step 2, so the resumed steps select by the early-exit loss (global scope,
    # rows moving between the 2 ranks), with a checkpoint written between two of them.
    config = small_config(tmp_path, max_steps=STEPS)
    # Both runs share one vocabulary (a fresh WordPiece training may break frequency ties differently).
    train_wordpiece(batched_texts(default_corpus()), 1000).save_pretrained(tmp_path / "tokenizer")
    common = ["--ds_config", config, "--sift_warmup_steps", "2", "--tokenizer", tmp_path / "tokenizer"]
    reference, split = tmp_path / "reference", tmp_path / "split"

    pretrain_2_ranks(common + ["--output_dir", reference])
    stopped = pretrain_2_ranks(common + ["--output_dir", split, "--exit_interval", STOP])
    assert "exit interval" in stopped.stdout + stopped.stderr
    assert latest_tag(split) == f"global_step{STOP}"
    assert [r["step"] for r in metrics(split)] == list(range(1, STOP + 1))
    assert not (split / "final").exists()

    resumed = pretrain_2_ranks(common + ["--output_dir", split, "--resume", "auto"])
    assert f"resumed from {split}/checkpoints/global_step{STOP}" in resumed.stdout + resumed.stderr

    want, got = metrics(reference), metrics(split)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    for a, b in zip(want, got):
        assert b["train_loss"] == a["train_loss"], a["step"]  # bitwise: same data, masks, dropout, weights
        assert b["lr"] == pytest.approx(a["lr"], abs=1e-12)
        assert (b["samples"], b["gross_samples"], b["epoch"]) == (a["samples"], a["gross_samples"], a["epoch"])
        for key in ("sift/score_kept_mean", "sift/score_dropped_mean", "sift/warmup"):
            assert b[key] == pytest.approx(a[key], abs=1e-6, nan_ok=True), (key, a["step"])
    assert want[-1]["sift/warmup"] == 0.0 and want[0]["sift/warmup"] == 1.0
    assert got[-1]["val_loss"] == want[-1]["val_loss"]
    assert got[-1]["val_acc"] == want[-1]["val_acc"]
    assert got[-1]["elapsed_s"] > got[STOP - 1]["elapsed_s"]  # the training time carries over
    assert (split / "final" / "config.json").exists()


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """Slurm pre-emption / the launcher's shutdown: one plain `python` process (a world of one)."""
    config = small_config(tmp_path, base="tiny_cpu_vanilla.json", max_steps=10_000)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, SCRIPT, "--ds_config", config, "--output_dir", str(out)],
                            env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() or len(metrics(out)) < 2:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    last = metrics(out)[-1]["step"]
    assert 2 <= last < 10_000
    assert latest_tag(out) == f"global_step{last}"
    assert "SIGTERM" in output


def test_resume_path_forms(tmp_path):
    save_dir = tmp_path / "run" / "checkpoints"
    tag = save_dir / "global_step7"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    assert checkpoint.find_resume("auto", str(tmp_path / "run")) is None  # no `latest`: start fresh
    (save_dir / "latest").write_text("global_step7")
    assert checkpoint.find_resume("auto", str(tmp_path / "run")) == (str(save_dir), None)
    assert checkpoint.find_resume(str(tmp_path / "run"), "elsewhere") == (str(save_dir), None)
    assert checkpoint.find_resume(str(save_dir), "elsewhere") == (str(save_dir), None)
    assert checkpoint.find_resume(str(tag), "elsewhere") == (str(save_dir), "global_step7")
    assert checkpoint.list_tags(str(save_dir)) == ["global_step7"]
