"""Exact resume: a 2-rank SIFT run stopped and resumed at steps 3, 4, 5, 6 and 10 reproduces the
uninterrupted run bitwise: every step's loss and selection scores, the validation loss and the final
parameters (real DeepSpeed runs on the CPU, with the default CPU optimizer path, torch's AdamW). It
selects by the frequency-corrected loss, whose running baseline travels in the checkpoint. Resuming
at step 5 is the case DeepSpeed's CPU FusedAdam gets wrong: its float32 beta^6 by multiplication
differs from pow(beta, 6). The same holds under ZeRO-2 with importance sampling (its draws are pure
functions of the seed, step and micro-step) and under ZeRO-3 with bf16. SIGTERM saves and exits
cleanly (one process here; under the launcher in test_reliability_crash.py)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from launch_helpers import (SCRIPT, cpu_env, metrics, one_line_error, pretrain_2_ranks, records_written, small_config,
                            write_config)
from sift_ds.pretrain import manifest
from sift_ds.pretrain.corpus import default_corpus
from sift_ds.pretrain.resume import find_resume
from sift_ds.pretrain.tokenizer import batched_texts, train_wordpiece

STEPS, STOPS, WARMUP = 12, (3, 4, 5, 6, 10), 2
SCORES = ("sift/score_kept_mean", "sift/score_dropped_mean")


def same_scores(want, got) -> None:
    """Each record's selection statistics are the uninterrupted run's, bitwise (NaN where it has none);
    selection began after the SIFT warm-up, with finite scores."""
    for a, b in zip(want, got):
        for key in SCORES:
            assert b[key] == a[key] or (a[key] != a[key] and b[key] != b[key]), (key, a["step"])
    selecting = [r for r in want if r["sift/warmup"] == 0.0]
    assert selecting and all(r["sift/score_kept_mean"] == r["sift/score_kept_mean"] for r in selecting)


def latest_tag(output_dir) -> str:
    with open(os.path.join(output_dir, "checkpoints", "latest")) as f:
        return f.read().strip()


def sha256_tree(directory) -> dict:
    """{relative path: sha256} of every file under ``directory``."""
    return {os.path.relpath(os.path.join(root, name), directory): hashlib.sha256(open(os.path.join(root, name), "rb")
                                                                                .read()).hexdigest()
            for root, _, names in os.walk(directory) for name in names}


def test_a_run_resumed_at_any_step_matches_the_uninterrupted_run(tmp_path, capsys):
    # SIFT warm-up ends at step 2, so the resumed steps select by the frequency-corrected early-exit loss
    # (global scope, rows moving between the 2 ranks), with checkpoints written between them.
    config = small_config(tmp_path, max_steps=STEPS)
    # Both runs share one vocabulary (a fresh WordPiece training may break frequency ties differently).
    train_wordpiece(batched_texts(default_corpus()), 1000).save_pretrained(tmp_path / "tokenizer")
    common = ["--ds_config", config, "--sift_warmup_steps", WARMUP, "--sift_start_after_lr_peak", "true",  # LR warm-up 2
              "--tokenizer", tmp_path / "tokenizer", "--sift_criterion", "freq_loss"]
    reference, split = tmp_path / "reference", tmp_path / "split"

    pretrain_2_ranks(common + ["--output_dir", reference])
    previous = None
    for stop in STOPS + (None,):
        exit_at = ["--exit_interval", stop] if stop else []
        proc = pretrain_2_ranks(common + ["--output_dir", split, *exit_at] + (["--resume", "auto"] if previous else []))
        log = proc.stdout + proc.stderr
        if previous:
            assert f"resumed from {split}/checkpoints/global_step{previous}" in log
        if stop:
            assert "exit interval" in log and latest_tag(split) == f"global_step{stop}"
            assert [r["step"] for r in metrics(split)] == list(range(1, stop + 1))
            assert not (split / "final").exists()
        previous = stop

    want, got = metrics(reference), metrics(split)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    for a, b in zip(want, got):
        assert b["train_loss"] == a["train_loss"], a["step"]  # bitwise: same data, masks, dropout, weights
        assert b["lr"] == a["lr"]
        assert (b["samples"], b["gross_samples"], b["epoch"]) == (a["samples"], a["gross_samples"], a["epoch"])
    assert [r["sift/warmup"] for r in got] == [r["sift/warmup"] for r in want] == [1.0] * WARMUP + [0.0] * (STEPS - WARMUP)
    same_scores(want, got)
    assert got[-1]["val_loss"] == want[-1]["val_loss"] and got[-1]["val_acc"] == want[-1]["val_acc"]
    assert got[-1]["elapsed_s"] > got[STOPS[-1] - 1]["elapsed_s"]  # the training time carries over
    final_want, final_got = (load_file(run / "final" / "model.safetensors") for run in (reference, split))
    assert final_want.keys() == final_got.keys()
    for name in final_want:
        assert torch.equal(final_want[name], final_got[name]), name  # the parameters, bitwise
    # The same command again without --resume is refused, and leaves the run's files byte-identical.
    before = sha256_tree(split)
    err = one_line_error(capsys, [str(a) for a in common + ["--output_dir", split]])
    assert "already holds a run" in err and "--resume auto" in err and "--overwrite_output_dir" in err
    assert sha256_tree(split) == before and any(p.startswith("checkpoints/global_step") for p in before)


@pytest.mark.parametrize("stage,bf16,criterion", [(2, False, ["--sift_criterion", "importance", "--sift_importance_mix", "0.3"]),
                                                  (3, True, [])], ids=["zero2-fp32-importance", "zero3-bf16"])
def test_resume_is_exact_under_zero_2_and_3_and_bf16(tmp_path, stage, bf16, criterion):
    """The same guarantee with partitioned gradients (ZeRO-2, rows drawn and weighted by importance
    sampling) or parameters (ZeRO-3, bf16 weights with fp32 master copies, the config's criterion): a
    run stopped at step 5 and resumed matches the uninterrupted one bitwise.
    A record every 3 steps: the stop at step 5 falls inside a log window, whose partial sums the
    checkpoint carries, so the step-6 record (steps 4-6) and the set of records are the uninterrupted
    run's; the stop itself adds no record and no evaluation."""
    config = small_config(tmp_path, max_steps=8)
    with open(config, encoding="utf-8") as f:
        edited = json.load(f)
    edited["zero_optimization"], edited["bf16"] = {"stage": stage}, {"enabled": bf16}
    write_config(config, edited)
    train_wordpiece(batched_texts(default_corpus()), 1000).save_pretrained(tmp_path / "tokenizer")
    common = ["--ds_config", config, "--sift_warmup_steps", "2", "--sift_start_after_lr_peak", "true",
              "--tokenizer", tmp_path / "tokenizer",
              "--log_interval", 3, *criterion]
    reference, split = tmp_path / "reference", tmp_path / "split"
    pretrain_2_ranks(common + ["--output_dir", reference])
    pretrain_2_ranks(common + ["--output_dir", split, "--exit_interval", 5])
    assert [r["step"] for r in metrics(split)] == [3]
    pretrain_2_ranks(common + ["--output_dir", split, "--resume", "auto"])
    with open(split / "run_config.json", encoding="utf-8") as f:
        recorded = json.load(f)["ds_config"]
    assert recorded["zero_optimization"]["stage"] == stage and recorded["bf16"]["enabled"] == bf16
    want, got = metrics(reference), metrics(split)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [3, 6, 8]
    assert [r["val_loss"] is None for r in got] == [True, True, False]
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in want]
    same_scores(want, got)
    assert got[-1]["val_loss"] == want[-1]["val_loss"]
    final_want, final_got = (load_file(run / "final" / "model.safetensors") for run in (reference, split))
    assert final_want.keys() == final_got.keys()
    for name in final_want:
        assert torch.equal(final_want[name], final_got[name]), name


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """Slurm pre-emption / the launcher's shutdown: one plain `python` process (a world of one)."""
    config = small_config(tmp_path, base="tiny_cpu_vanilla.json", max_steps=10_000)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, SCRIPT, "--ds_config", config, "--output_dir", str(out)],
                            env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while records_written(out) < 2:
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
    assert manifest.incomplete_reason(str(out / "checkpoints" / f"global_step{last}")) is None
    assert "SIGTERM" in output


def test_resume_path_forms(tmp_path):
    save_dir = tmp_path / "run" / "checkpoints"
    tag = save_dir / "global_step7"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert find_resume("auto", str(tmp_path / "run")) is None  # nothing complete: start fresh
    manifest.write_manifest(str(tag), "global_step7", 7)
    (save_dir / "latest").write_text("global_step7")
    for form in (str(tmp_path / "run"), str(save_dir), str(tag)):
        point = find_resume(form, "elsewhere")
        assert (point.load_dir, point.tag, point.warnings) == (str(save_dir), "global_step7", []), form
    point = find_resume("auto", str(tmp_path / "run"))
    assert (point.load_dir, point.tag) == (str(save_dir), "global_step7")
