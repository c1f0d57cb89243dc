"""launch/pretrain_gpt.py: a real 2-rank DeepSpeed CPU run of the tiny Llama preset with SIFT selecting
by entropy at exit 1 (metrics, next-token validation checked against a direct HF forward of the
exported model, exact resume), the causal FLOPs count against a hand count, and the one-line refusals
of a model of the wrong kind."""
import json
import math
import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from launch_helpers import GPT_SCRIPT, REPO, load_cli, metrics, read_config, run_deepspeed, write_config
from sift_ds.pretrain.corpus import load_corpus
from sift_ds.pretrain.data import build_pretrain_data
from sift_ds.pretrain.metrics import FlopsModel
from sift_ds.pretrain.models import build_model, model_config

STEPS, STOP, SEQ = 6, 3, 32
WORDS = "the of and a to in is was for on data model layer token vocabulary".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpt")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(WORDS[(i * 7 + j * j) % len(WORDS)] for j in range(30)) for i in range(120)))
    config = read_config("tiny_llama_cpu_sift_experiment.json")
    config["train_micro_batch_size_per_gpu"] = 4
    config["scheduler"]["params"].update(warmup_num_steps=2)
    config["sift"].update(selection_start_step=2, start_after_lr_peak=True)  # at the LR peak: a test of the mechanics
    config["pretrain"].update(seq_len=SEQ, vocab_size=300, max_steps=STEPS, log_interval=1, eval_interval=STEPS,
                              save_interval=0, data=[str(corpus)], cache_dir=str(tmp / "cache"), val_fraction=0.1)
    return tmp, write_config(tmp / "gpt.json", config), str(corpus)


def pretrain_gpt(args) -> str:
    proc = run_deepspeed(GPT_SCRIPT, args, num_gpus=2, timeout=300, env={"DS_ACCELERATOR": "cpu"})
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def whole(setup):
    """The uninterrupted run: (output dir, log)."""
    tmp, config, _ = setup
    return tmp / "whole", pretrain_gpt(["--ds_config", config, "--output_dir", tmp / "whole"])


def test_tiny_llama_trains_validates_and_exports(setup, whole):
    tmp, config, corpus = setup
    whole, log = whole
    assert "model: tiny_llama, " in log and "byte-level BPE trained on the corpus" in log
    records = metrics(whole)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["train_loss"]) and r["mfu"] is None for r in records)  # CPU: no MFU
    assert all(r["sift/nonfinite_scores"] == 0 for r in records)
    assert [r["sift/warmup"] for r in records] == [1.0, 1.0] + [0.0] * (STEPS - 2)
    assert records[-1]["sift/score_kept_mean"] > records[-1]["sift/score_dropped_mean"]  # kept = highest entropy
    last = records[-1]
    assert math.isfinite(last["val_loss"]) and 0 <= last["val_acc"] <= 1

    # The exported model reloads as an HF causal LM; its own next-token loss on the validation blocks
    # (rebuilt from the corpus with the run's tokenizer) is the job's val_loss.
    model = AutoModelForCausalLM.from_pretrained(whole / "final").double().eval()
    tokenizer = AutoTokenizer.from_pretrained(whole / "final")
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == "<|endoftext|>" and model.config.eos_token_id == tokenizer.eos_token_id
    data = build_pretrain_data(load_corpus([corpus]), tokenizer, SEQ, "clm", 0.1, 2000, 0, str(tmp / "cache"))
    blocks = torch.as_tensor(np.stack(data.val.with_format("numpy")["input_ids"]))
    assert (blocks == tokenizer.eos_token_id).any()  # documents are EOS-separated
    with torch.no_grad():
        losses = [model(input_ids=row[None], labels=row[None]).loss.item() for row in blocks]
    assert last["val_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    with torch.no_grad():
        hits = (model(input_ids=blocks).logits[:, :-1].argmax(-1) == blocks[:, 1:]).double().mean().item()
    assert last["val_acc"] == pytest.approx(hits, abs=1e-9)


def test_a_resumed_run_matches_the_uninterrupted_one(setup, whole):
    """Stopped after step STOP and resumed: the same losses as the uninterrupted run."""
    tmp, config, _ = setup
    records, split = metrics(whole[0]), tmp / "split"
    pretrain_gpt(["--ds_config", config, "--output_dir", split, "--exit_interval", STOP])
    log = pretrain_gpt(["--ds_config", config, "--output_dir", split, "--resume", "auto"])
    assert f"global_step{STOP}" in log
    resumed = metrics(split)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in records]
    assert resumed[-1]["val_loss"] == records[-1]["val_loss"]


def test_causal_flops_count_against_a_hand_count():
    config = model_config("tiny_llama", 300)
    model = build_model(config, "clm")
    seq, hidden, layers = 128, config.hidden_size, config.num_hidden_layers
    body = sum(p.numel() for p in model.model.layers.parameters()) + model.model.norm.weight.numel()
    head = model.lm_head.weight.numel()  # untied: the input embedding is a lookup, not counted
    flops = FlopsModel.for_causal_lm(model, seq, exit_layer=1, max_positions=32)
    assert flops.train_per_token == 6 * (body + head) + 12 * layers * hidden * seq
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    norm = model.model.norm.weight.numel()
    assert flops.select_per_token == pytest.approx(2 * per_layer + 4 * hidden * seq + 0.25 * 2 * (norm + head))


@pytest.mark.parametrize("script, model, message", [
    ("pretrain_gpt.py", "tiny", "--model tiny: model_type 'bert' is not a causal LM"),
    ("pretrain_bert.py", "tiny_llama", "--model tiny_llama: model_type 'llama' is not a masked-LM model"),
])
def test_a_model_of_the_other_kind_is_refused_in_one_line(setup, capsys, script, model, message):
    tmp, config, _ = setup
    cli = load_cli(os.path.join(REPO, "launch", script))
    objective = "clm" if script == "pretrain_gpt.py" else "mlm"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--ds_config", config, "--model", model, "--objective", objective, "--output_dir",
                  str(tmp / "refused"), "--check_only"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith(f"{script}: error: {message}")


def test_the_gpt_job_refuses_a_masked_objective(setup, capsys):
    tmp, config, _ = setup
    with pytest.raises(SystemExit):
        load_cli(GPT_SCRIPT).main(["--ds_config", config, "--objective", "mlm", "--check_only"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "pretrain_gpt.py: error: --objective mlm: pretrain_gpt.py trains clm; use launch/pretrain_bert.py for masked LMs")
