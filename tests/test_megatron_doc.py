"""docs/megatron.md's example script runs as written, on the CPU, up to Megatron-LM's training loop
(which needs CUDA): tests/dist_scripts/megatron_doc_example.py executes its Python block with
stand-ins for the three Megatron-LM functions it imports, then calls the functions that
``run_pretrain`` handed to ``pretrain`` on a small megatron-core ``BertModel`` (one gloo rank). The
references are independent of sift_ds: the entropy at exit layer 1 in float64 from the model's own
forward, and the dense model's own masked-LM loss on the kept rows."""
import json
import os
import subprocess
import sys

import pytest

from launcher import REPO, clean_env, free_port

pytest.importorskip("megatron.core", reason="needs the megatron-core test extra")


def test_megatron_doc_example_runs():
    cmd = [sys.executable, os.path.join(REPO, "tests", "dist_scripts", "megatron_doc_example.py")]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(MASTER_PORT=str(free_port())), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # run_pretrain wrapped the script's two functions and passed Megatron the --sift-* flags
    assert r["provider_wrapped"] and r["is_distributed"] and r["forward_step_wrapped"]
    assert r["model_type"] == "ModelType.encoder_or_decoder" and r["tokenizer_type"] == "NullTokenizer"
    assert r["config"] == ["entropy", 1, 0.5, 2] and r["model"] == "BertModel"
    # the training set in items of 1 / keep_ratio = 2 samples; the validation set as the script made it
    assert r["lengths"] == [8, 4]  # asked for 8 training samples: 16 made, 8 items
    assert r["gross_shape"] == [2, 2, 32]
    # the scores are the float64 entropy at exit 1, and the kept rows the top half of them
    assert r["by_score"]
    assert max(abs(a - b) for a, b in zip(r["scores"], r["reference_scores"])) < 1e-5
    top = sorted(range(4), key=lambda i: -r["reference_scores"][i])[:2]
    assert r["kept"] == sorted(top)
    # the script's forward_step and loss_func ran on those rows: the dense model's loss, with gradients
    assert r["loss"] == pytest.approx(r["reference_loss"], abs=1e-5)
    assert r["grads"] > 0 and r["grads_finite"]
    assert {"lm loss", "sift/kept_fraction", "sift/score_kept_mean", "sift/warmup"} <= set(r["report"])
    # evaluation passes through SIFT untouched
    assert r["eval_report"] == ["lm loss"] and 0 < r["eval_loss"] < 10
