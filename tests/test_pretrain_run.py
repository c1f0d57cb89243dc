"""A real 2-rank DeepSpeed CPU run of the shipped tiny SIFT config: training, validation accuracy,
metrics.jsonl, TensorBoard, checkpoint, tokenizer and the exported model."""
import json
import math
import os
import time

from launch_helpers import CONFIGS, metrics, pretrain_2_ranks
from process_guard import shm_buffers

STEPS = 40


def test_two_rank_tiny_sift_run(tmp_path):
    out, start = tmp_path / "run", time.time() - 1.0
    proc = pretrain_2_ranks([
        "--ds_config", os.path.join(CONFIGS, "tiny_cpu_sift.json"), "--output_dir", out, "--max_steps", STEPS,
        "--seq_len", 64, "--eval_interval", 20, "--log_interval", 5, "--sift_warmup_steps", 10,
        "--cache_dir", tmp_path / "cache",
    ])
    log = proc.stdout + proc.stderr
    # DeepSpeed's CPU all-reduce made a 69 MB /dev/shm file per rank; the job removed them (RAM otherwise)
    assert "deepspeed_shm_comm_op built successfully" in log, log[-3000:]
    assert shm_buffers(since=start) == []
    assert "batch: micro 16, gross 32 per rank, grad-accum 1, world 2, global 32" in log
    assert "optimizer: " in log and "(apex.optimizers not available)" in log

    records = metrics(out)
    assert [r["step"] for r in records] == list(range(5, STEPS + 1, 5))
    evals = [r for r in records if r["val_acc"] is not None]
    assert [r["step"] for r in evals] == [20, 40]
    first, last = evals[0], evals[-1]
    print(f"\nvalidation: step {first['step']} loss {first['val_loss']:.3f} acc {first['val_acc']:.3f} -> "
          f"step {last['step']} loss {last['val_loss']:.3f} acc {last['val_acc']:.3f}")
    # 40 steps, inside the config's 100-step learning-rate warm-up: the unigram plateau, and a falling loss (below)
    assert min(last["val_acc"], first["val_acc"]) > 0.05
    # the fidelity probe at each evaluation: a rank correlation and a top-half overlap
    assert all(-1 <= r["probe/spearman"] <= 1 and 0 <= r["probe/top_half_overlap"] <= 1 for r in evals)
    assert last["val_loss"] < first["val_loss"] < math.log(4096)
    for r in records:
        assert r["samples"] == r["step"] * 32 and r["gross_samples"] == r["step"] * 64
        assert r["tokens_per_s"] > 0 and r["mfu"] is None and r["train_loss"] > 0  # no GPU peak on the CPU
        assert r["sift/nonfinite_scores"] == 0
        # the window's 5 steps of both ranks: half of all their gross rows kept, whichever rank kept them
        assert r["sift/kept_fraction"] == 0.5 and r["sift/keep_ratio"] == 0.5
        assert 0 < r["sift/selection_share"] < 1 and r["sift/selection_time_s"] > 0
    assert [r["sift/warmup"] for r in records[:3]] == [1.0, 1.0, 0.0]  # selection from step 11 on
    assert records[-1]["sift/score_kept_mean"] > records[-1]["sift/score_dropped_mean"]  # kept = highest scores
    assert records[-1]["elapsed_s"] > 0

    # Checkpoint, run config, tokenizer and the exported Hugging Face model.
    assert (out / "checkpoints" / "latest").read_text().strip() == f"global_step{STEPS}"
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["world_size"] == 2 and run_config["ds_config"]["train_batch_size"] == 32
    assert run_config["sift"]["exit_layer"] == 1 and run_config["options"]["model"] == "tiny"
    assert "optimizer" in run_config["ds_config"]
    exported = json.loads((out / "final" / "config.json").read_text())
    assert exported["architectures"] == ["BertForMaskedLM"]  # an importable HF class, not the sparse subclass
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    model = BertForMaskedLM.from_pretrained(out / "final")
    assert model.config.vocab_size == len(tokenizer) == 4096 and model.config.num_hidden_layers == 2

    # TensorBoard scalars through DeepSpeed's monitor.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / "tiny_cpu_sift"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "Pretrain/val_acc" in tags and "Pretrain/train_loss" in tags and "Pretrain/sift/kept_fraction" in tags
    assert [e.step for e in events.Scalars("Pretrain/val_acc")] == [20, 40]
