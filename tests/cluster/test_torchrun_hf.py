"""The HF front-end on two "nodes": launch/run_mlm_sift.py under ``torchrun --nnodes 2 --rdzv-backend c10d``,
one torchrun per node (127.0.0.1 hosts the rendezvous, 127.0.0.2 joins it), one CPU process each, gloo
on the loopback interface. Both nodes finish; the run trained on the global batch of both (8 rows from
4 per device) with SIFT selecting half of each gross batch, and evaluated.
"""
import json
import math
import os
import subprocess
import sys

import pytest

from launcher import REPO, clean_env, free_port

pytestmark = pytest.mark.cluster
MLM_SCRIPT = os.path.join(REPO, "launch", "run_mlm_sift.py")
MODEL_CONFIG = os.path.join(REPO, "ds_configs", "models", "bert_L4_H128.json")
TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def test_run_mlm_sift_under_a_two_node_torchrun(tmp_path):
    from pydoc_data.topics import topics

    lines = [line for key in sorted(topics) for line in topics[key].splitlines() if line.strip()]
    train_file = tmp_path / "train.txt"
    train_file.write_text("\n".join(lines[:900]) + "\n")
    out = tmp_path / "out"
    endpoint = f"127.0.0.1:{free_port()}"
    script = [MLM_SCRIPT, "--config_name", MODEL_CONFIG, "--tokenizer_name", TOKENIZER, "--train_file", str(train_file),
              "--do_train", "--do_eval", "--output_dir", str(out), "--per_device_train_batch_size", "4",
              "--max_seq_length", "64", "--warmup_steps", "4", "--max_steps", "4", "--logging_steps", "1",
              "--use_cpu", "--report_to", "none", "--max_eval_samples", "8", "--disable_tqdm", "true", "--log_level", "info",
              "--sift_config", json.dumps({"selection_start_step": 1, "kernel": "torch"})]
    env = clean_env(HF_HUB_OFFLINE="1", GLOO_SOCKET_IFNAME="lo")
    nodes = []
    for rank, address in enumerate(("127.0.0.1", "127.0.0.2")):
        cmd = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                          "--rdzv-endpoint", endpoint, "--rdzv-id", "sift-test", "--rdzv-conf", f"is_host={rank == 0}",
                          "--local-addr", address, "--max-restarts", "0", *script]
        with open(tmp_path / f"node{rank}.log", "w") as log:
            nodes.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [node.wait(timeout=400) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    logs = [(tmp_path / f"node{rank}.log").read_text() for rank in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in logs[0], logs[0][-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    trained = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in trained] == [1, 2, 3, 4]
    assert all(h["sift/kept_fraction"] == 0.5 for h in trained)
    results = json.loads((out / "all_results.json").read_text())
    assert math.isfinite(results["eval_loss"])
