"""The end-to-end study against run_mlm.py: its fixed evaluation against a direct HF forward in
float64, its masks and document split, the FLOPs model by hand, the settings every arm shares, and
the report's budget-matched speed-ups on results whose answer is known."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from sift_ds.study import fixed_eval, flops_model, run_mlm_arms, run_mlm_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY_CONFIG = os.path.join(REPO, "ds_configs", "l12h128_cpu_study.json")


def test_evaluate_matches_a_float64_forward_and_hf_loss():
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16))
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 50, size=(7, 12))
    special = np.zeros_like(ids)
    special[:, 0] = special[:, -1] = 1
    inputs, labels = fixed_eval.fixed_masks({"input_ids": ids, "special_tokens_mask": special}, mask_id=4,
                                            vocab_size=50, seed=3, share=0.3)
    got = fixed_eval.evaluate(model, inputs, labels, batch_size=3)
    reference = model.double().eval()
    with torch.no_grad():
        x, y = torch.from_numpy(inputs), torch.from_numpy(labels)
        logits = reference(input_ids=x).logits
        keep = y != -100
        logp = torch.log_softmax(logits[keep], dim=-1)
        loss = float(-logp[torch.arange(int(keep.sum())), y[keep]].mean())
        acc = float((logits[keep].argmax(-1) == y[keep]).double().mean())
        hf_loss = float(reference(input_ids=x, labels=y).loss)
    assert got["val_tokens"] == int(keep.sum())
    assert got["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert got["val_loss"] == pytest.approx(hf_loss, rel=1e-5)
    assert got["val_acc"] == pytest.approx(acc)


def test_fixed_masks_follow_bert_rule_and_repeat():
    ids = np.arange(200_000).reshape(1000, 200) % 1000 + 10
    special = np.zeros_like(ids)
    special[:, :2] = 1
    blocks = {"input_ids": ids, "special_tokens_mask": special}
    inputs, labels = fixed_eval.fixed_masks(blocks, mask_id=3, vocab_size=1000, seed=7)
    again, labels_again = fixed_eval.fixed_masks(blocks, mask_id=3, vocab_size=1000, seed=7)
    assert np.array_equal(inputs, again) and np.array_equal(labels, labels_again)
    target = labels != -100
    assert not target[:, :2].any()
    assert np.array_equal(labels[target], ids[target])
    assert target[:, 2:].mean() == pytest.approx(0.15, abs=0.003)
    masked = (inputs == 3) & target
    kept = (inputs == ids) & target
    assert masked.sum() / target.sum() == pytest.approx(0.8, abs=0.01)
    assert kept.sum() / target.sum() == pytest.approx(0.1 + 0.1 / 1000, abs=0.01)  # a random token may be itself
    assert np.array_equal(inputs[~target], ids[~target])


def test_document_split_is_fixed_disjoint_and_ordered():
    texts = [f"doc {i}" for i in range(101)]
    train, held = fixed_eval.split_documents(texts, 0.05, seed=0)
    assert len(held) == 5 and len(train) == 96
    assert sorted(train + held, key=texts.index) == texts
    assert train == sorted(train, key=texts.index) and held == sorted(held, key=texts.index)
    assert fixed_eval.split_documents(texts, 0.05, seed=0) == (train, held)
    with pytest.raises(ValueError, match="held_share"):
        fixed_eval.split_documents(texts, 1.0)


def test_evaluation_blocks_cut_the_concatenated_stream():
    class Words:  # a tokenizer: [CLS]=1 word ids [SEP]=2
        def __call__(self, text, return_special_tokens_mask=False):
            ids = [1] + [10 + len(w) for w in text.split()] + [2]
            return {"input_ids": ids, "special_tokens_mask": [1] + [0] * (len(ids) - 2) + [1]}

    texts = ["a bb ccc", "dddd", "e ff ggg hhhh iiiii"]
    stream = [1, 11, 12, 13, 2, 1, 14, 2, 1, 11, 12, 13, 14, 15, 2]
    blocks = fixed_eval.evaluation_blocks(texts, Words(), seq_len=4, max_blocks=10)
    assert blocks["input_ids"].tolist() == [stream[0:4], stream[4:8], stream[8:12]]
    assert blocks["special_tokens_mask"][1].tolist() == [1, 1, 0, 1]
    assert fixed_eval.evaluation_blocks(texts, Words(), seq_len=4, max_blocks=2)["input_ids"].shape == (2, 4)


def test_flops_model_by_hand():
    """BERT-base at seq 128 against the hand count (multiply-adds x 2, biases and layer norms left
    out): a layer 24 H^2 + 4 S H per token forward, the dense head 2 (H^2 + H V); a step 3 forwards;
    the selection at exit 1, keep 0.5: two gross tokens per trained token through one layer and the
    head at the masked 15%."""
    layer = 24 * 768 ** 2 + 4 * 128 * 768
    encoder, head = 12 * layer, 2 * (768 ** 2 + 768 * 30522)
    model = flops_model.step_model(flops_model.BERT_BASE, 128, exit_layer=1, keep_ratio=0.5)
    assert model.head_share == pytest.approx(head / (encoder + head), rel=0.01)
    assert model.head_share == pytest.approx(0.216, abs=0.003)
    assert model.head_speedup == pytest.approx((encoder + head) / (encoder + 0.15 * head), rel=0.01)
    select, train = 2 * (layer + 0.15 * head), 3 * (encoder + 0.15 * head)
    assert model.selection_share == pytest.approx(select / (select + train), rel=0.02)
    assert flops_model.sift_speedup(1.2, 0.1) == pytest.approx(1.08)


def test_every_arm_gets_the_ds_config_settings():
    section, settings = run_mlm_report.study_settings(STUDY_CONFIG, '{"anneal_start_step": 0, "anneal_end_step": 0}')
    with open(STUDY_CONFIG, encoding="utf-8") as f:
        config = json.load(f)
    shape = run_mlm_arms.StudyShape("model.json", STUDY_CONFIG, "tok", "train.json", "prep", **settings)
    arms = {a.label: a for a in run_mlm_arms.study_arms([300, 450, 675], 450)}
    assert [a.label for a in arms.values() if a.frontier] == ["run_mlm-300", "run_mlm-450", "run_mlm-675"]
    words = run_mlm_arms.run_mlm_command("python", arms["trainer_sparse_sift"], shape, 2, "out")
    flag = lambda name: words[words.index(name) + 1]  # noqa: E731
    params = config["optimizer"]["params"]
    assert float(flag("--learning_rate")) == params["lr"]
    assert float(flag("--adam_epsilon")) == params["eps"] and float(flag("--weight_decay")) == params["weight_decay"]
    assert int(flag("--warmup_steps")) == config["scheduler"]["params"]["warmup_num_steps"]
    assert int(flag("--per_device_train_batch_size")) == config["train_micro_batch_size_per_gpu"]
    assert float(flag("--max_grad_norm")) == config["gradient_clipping"]
    assert flag("--lr_scheduler_type") == "linear" and flag("--sparse_mlm_head") == "true"
    sift = json.loads(flag("--sift_config"))
    assert sift == dict(config["sift"], enabled=True, anneal_start_step=0, anneal_end_step=0)
    dense = run_mlm_arms.run_mlm_command("python", arms["run_mlm-300"], shape, 2, "out")
    assert dense[dense.index("--sparse_mlm_head") + 1] == "false"
    assert json.loads(dense[dense.index("--sift_config") + 1]) == {"enabled": False}
    job = run_mlm_arms.job_command("deepspeed", 29500, arms["job_sift"], shape, 2, "out")
    assert job[job.index("--sift_anneal_end_step") + 1] == "0" and job[job.index("--max_steps") + 1] == "450"
    assert section["vocab_size"] == 8192


def test_plan_is_seed_major_and_changes_neighbours_between_seeds():
    arms = run_mlm_arms.study_arms([300, 450, 675], 450)
    plan = run_mlm_arms.study_plan(arms, 3)
    assert sorted((a.label, s) for a, s in plan) == sorted((a.label, s) for s in range(3) for a in arms)
    assert [s for _, s in plan] == sorted(s for _, s in plan)  # seed-major
    neighbours = []
    for seed in range(3):
        order = [a.label for a, s in plan if s == seed]
        neighbours.append({frozenset(pair) for pair in zip(order, order[1:])})
    assert not set.intersection(*neighbours)  # no two arms are next to each other in every seed
    assert [a for a, _ in run_mlm_arms.study_plan(arms[:2], 1)] == arms[:2]


def test_settings_the_trainer_cannot_match_are_refused(tmp_path):
    with open(STUDY_CONFIG, encoding="utf-8") as f:
        config = json.load(f)
    config["scheduler"]["params"]["warmup_type"] = "log"
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="scheduler"):
        run_mlm_report.study_settings(str(path), "{}")
    with pytest.raises(ValueError, match="--sift"):
        run_mlm_report.study_settings(STUDY_CONFIG, '{"keep_ratio": 2}')


def _result(out, arm, seed, steps, seconds, loss, acc, share=None):
    folder = out / "runs" / arm / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(
        {"arm": arm, "seed": seed, "steps": steps, "samples": steps * 16, "train_seconds": seconds,
         "val_loss": loss, "val_acc": acc, "selection_share": share}))


def test_report_reads_speedups_off_the_run_mlm_frontier(tmp_path):
    """Frontier: 300 / 450 / 675 steps at 300 / 450 / 675 s reach loss 6 / 5 / 4 (acc .1 / .2 / .3).
    An arm at 450 steps in 225 s reaching loss 5 is 2x faster; one reaching loss 4.5 in 450 s needs
    the frontier's 562.5 s (linear) or 450 * 1.5 ** 0.5 s (log)."""
    out = tmp_path / "study"
    for seed in range(3):
        for steps, loss, acc in ((300, 6.0, 0.1), (450, 5.0, 0.2), (675, 4.0, 0.3)):
            _result(out, f"run_mlm-{steps}", seed, steps, float(steps), loss, acc)
        _result(out, "trainer_sparse", seed, 450, 225.0, 5.0, 0.2)
        _result(out, "trainer_sparse_sift", seed, 450, 450.0, 4.5, 0.25, share=0.1)
    (out / run_mlm_report.STUDY_FILE).write_text(json.dumps({
        "command": "python launch/run_mlm_study.py", "model": os.path.join(REPO, "ds_configs/models/bert_L12_H128.json"),
        "vocab_size": 8192, "shape": {"seq_len": 128, "mlm_probability": 0.15,
                                      "sift": [["exit_layer", 1], ["keep_ratio", 0.5]]}}))
    arms = run_mlm_arms.study_arms([300, 450, 675], 450)
    md, table = run_mlm_report.write(str(out), arms, n_boot=50)
    rows = {(r["arm"], r["reading"], r["metric"], r["axis"]): r for r in __import__("csv").DictReader(open(table))}
    assert float(rows[("trainer_sparse", "linear", "val_loss", "time")]["speedup"]) == pytest.approx(2.0)
    assert float(rows[("trainer_sparse_sift", "linear", "val_loss", "time")]["speedup"]) == pytest.approx(1.25)
    assert float(rows[("trainer_sparse_sift", "log", "val_loss", "time")]["speedup"]) == pytest.approx(1.5 ** 0.5, 1e-3)
    assert float(rows[("trainer_sparse_sift", "linear", "val_acc", "samples")]["speedup"]) == pytest.approx(1.25)
    text = open(md).read()
    assert "| SIFT within Trainer | trainer_sparse_sift / trainer_sparse | **0.625** [0.625..0.625]" in text
    assert "BERT-base, seq 128 | 21." in text


def test_launcher_refuses_a_frontier_of_one_budget():
    done = subprocess.run([sys.executable, os.path.join(REPO, "launch", "run_mlm_study.py"), "--budgets", "300",
                           "--analyze_only"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("run_mlm_study.py: error: --budgets")


def _step_stages():
    spec = importlib.util.spec_from_file_location("step_stages", os.path.join(REPO, "benchmarks", "step_stages.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_stages_puts_each_sampled_stack_in_its_stage(tmp_path):
    """py-spy stacks (root first) as benchmarks/step_stages.py reads them: the outer context decides
    (a backward, the selection's own prefix forward), else the innermost forward module (the
    masked-only head wraps the model's whole forward); nothing outside the training loop counts."""
    stages = _step_stages()
    loop = ["<module> (run_mlm_sift.py:404)", "Trainer._inner_training_loop (transformers/trainer.py:1675)"]
    sparse = ["Trainer.compute_loss (transformers/trainer.py:2200)", "forward (sift_ds/mlm_head.py:110)"]
    layer = ["BertEncoder.forward (transformers/models/bert/modeling_bert.py:450)",
             "BertLayer.forward (transformers/models/bert/modeling_bert.py:386)", "linear (torch/nn/functional.py:1)"]
    stacks = {
        "forward: encoder": loop + sparse + layer,
        "forward: MLM head + loss": loop + sparse + ["cross_entropy (torch/nn/functional.py:3400)"],
        "selection": loop + ["SiftTrainer.get_batch_samples (sift_ds/hf.py:205)", "select (sift_ds/frontend.py:90)"]
        + layer,
        "backward": loop + ["Tensor.backward (torch/_tensor.py:623)", "_engine_run_backward (torch/autograd/graph.py:979)"],
        "optimizer": loop + ["AdamW.step (torch/optim/adamw.py:200)"],
        "data": loop + ["_SingleProcessDataLoaderIter._next_data (torch/utils/data/dataloader.py:790)"],
        "front-end": loop + ["Trainer.log (transformers/trainer.py:3000)"],
    }
    for stage, frames in stacks.items():
        assert stages.stage_of(frames) == stage, stage
    assert stages.stage_of(["<module> (run_mlm_sift.py:404)", "tokenize (x.py:1)"]) is None
    raw = tmp_path / "raw.txt"
    raw.write_text(";".join(stacks["backward"]) + " 7\n" + ";".join(stacks["optimizer"]) + " 3\n"
                   + "<module> (a.py:1);setup (a.py:2) 5\n")
    assert stages.read_raw(str(raw)) == {"backward": 7, "optimizer": 3}
