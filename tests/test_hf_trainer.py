"""``sift_ds.hf.SiftTrainer`` on 2 CPU ranks (gloo): Trainer's own DDP with bf16 autocast, and a
DeepSpeed ZeRO-2 config passed as ``TrainingArguments.deepspeed``. One run per configuration (6
steps, a resume from the step-3 checkpoint) that every test of it reads; the script checks each
selection against an independent float64 top-k of a direct HF forward (tests/dist_scripts/hf_trainer.py).
And the example script launch/run_mlm_sift.py: run_mlm.py's command line, its output_dir rule, one-line
start-up errors, and a resume that trains exactly what the uninterrupted run trained."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from launch_helpers import load_cli
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


def pooled(records) -> dict:
    """The sift/* means of the selections ``records``, pooled over them (float64, from their scores and kept rows)."""
    kept, dropped, nonfinite = [], [], 0
    for r in records:
        for score, is_kept in zip(r["scores"], r["kept"]):
            if math.isfinite(score):
                (kept if is_kept else dropped).append(score)
            elif r["by_score"]:
                nonfinite += 1
    n = len(records)
    return {"sift/score_kept_mean": sum(kept) / len(kept) if kept else math.nan,
            "sift/score_dropped_mean": sum(dropped) / len(dropped) if dropped else math.nan,
            "sift/nonfinite_scores": nonfinite / n, "sift/warmup": sum(not r["by_score"] for r in records) / n,
            "sift/kept_fraction": sum(sum(r["kept"]) for r in records) / sum(len(r["kept"]) for r in records),
            "sift/keep_ratio": sum(r["keep_ratio"] for r in records) / n}


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
    # each window against the test's own average over its micro-steps and both ranks (they score other rows)
    assert ranks[0]["records"][-1]["scores"] != ranks[1]["records"][-1]["scores"]
    for h in logs:
        window = [r for res in ranks for r in res["records"] if h["step"] - 2 <= r["step"] < h["step"]]
        assert len(window) == 2 * GAS * RANKS
        for key, value in pooled(window).items():
            assert h[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (h["step"], key)
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


MLM_SCRIPT = os.path.join(REPO, "launch", "run_mlm_sift.py")
MODEL_CONFIG = os.path.join(REPO, "ds_configs", "models", "bert_L4_H128.json")
TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    """A text file of CPython's documentation, one text per line (about 60 blocks of 64 tokens)."""
    from pydoc_data.topics import topics

    lines = [line for key in sorted(topics) for line in topics[key].splitlines() if line.strip()]
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text("\n".join(lines[:900]) + "\n")
    return str(path)


def mlm_command(train_file, out, *extra):
    """A run_mlm.py command line with run_mlm_sift.py's one added flag (--sift_config)."""
    return [sys.executable, MLM_SCRIPT, "--config_name", MODEL_CONFIG, "--tokenizer_name", TOKENIZER,
            "--train_file", train_file, "--do_train", "--do_eval", "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--max_seq_length", "64", "--warmup_steps", "4",
            "--use_cpu", "--report_to", "none", "--max_eval_samples", "8", "--disable_tqdm", "true", *map(str, extra)]


def run_mlm(train_file, out, *extra):
    return subprocess.run(mlm_command(train_file, out, *extra), cwd=REPO, env=clean_env(HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=600)


def digests(folder) -> dict:
    """sha256 of every file under ``folder``, by relative path."""
    import hashlib

    return {os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(folder) for f in files}


def without_start(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in ("selection_start_step", "warmup_steps")}


def test_run_mlm_example_trains_with_sift(train_file, tmp_path):
    """launch/run_mlm_sift.py (one process, no DeepSpeed) with the "sift" section of the shipped
    ds_configs/hf/zero2_sift.json (selection from step 1): 2 steps, the sift/* keys in its logs."""
    proc = run_mlm(train_file, tmp_path, "--max_steps", "2", "--logging_steps", "1",
                   "--sift_config", json.dumps(dict(without_start(SHIPPED_SIFT), selection_start_step=1, kernel="torch")))
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = json.load(open(tmp_path / "checkpoint-2" / "trainer_state.json"))
    logs = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2] and all(h["sift/kept_fraction"] == 0.5 for h in logs)
    results = json.load(open(tmp_path / "all_results.json"))
    assert math.isfinite(results["eval_loss"]) and 0 <= results["eval_accuracy"] <= 1
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))


SIFT_ON = {"selection_start_step": 1, "kernel": "torch", "criterion": "freq_loss"}


@pytest.mark.parametrize("sift", [SIFT_ON, {"enabled": False}], ids=["sift", "no_sift"])
def test_run_mlm_resume_is_exact(train_file, tmp_path, sift):
    """A run stopped after its step-3 checkpoint (the checkpoint copied into a fresh output_dir) and
    started again with the same command line resumes it, as run_mlm.py does, and then logs at every
    step exactly the loss, gradient norm and SIFT statistics of the uninterrupted run (dropout on,
    masks drawn per step, gradient accumulation 2, freq_loss's running baseline restored); the
    checkpoint's files stay byte-identical."""
    args = ("--max_steps", "6", "--save_steps", "3", "--logging_steps", "1", "--gradient_accumulation_steps", "2",
            "--log_level", "info", "--sift_config", json.dumps(sift))
    whole = run_mlm(train_file, tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr[-4000:]
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", resumed / "checkpoint-3")
    before = digests(resumed / "checkpoint-3")
    again = run_mlm(train_file, resumed, *args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"Checkpoint detected, resuming training at {resumed / 'checkpoint-3'}" in again.stdout + again.stderr
    assert digests(resumed / "checkpoint-3") == before

    def logged(out):
        state = json.load(open(out / "checkpoint-6" / "trainer_state.json"))
        return {h["step"]: {k: v for k, v in h.items() if k.startswith(("loss", "grad_norm", "sift/score_"))}
                for h in state["log_history"] if "loss" in h}

    expected, got = logged(tmp_path / "whole"), logged(resumed)
    assert sorted(got) == list(range(1, 7))
    for step in range(4, 7):  # the resumed steps, compared exactly (NaN: a window of warm-up only)
        assert json.dumps(got[step]) == json.dumps(expected[step]), step
    if sift.get("enabled", True):
        assert all(math.isfinite(expected[s]["sift/score_kept_mean"]) for s in range(4, 7))


def test_a_start_in_a_used_output_dir_without_a_checkpoint_is_refused_and_changes_nothing(
        train_file, tmp_path, monkeypatch, capsys):
    """run_mlm.py's rule: an output_dir with files and no checkpoint (here a finished run's exported
    model and results) is refused in one line naming --overwrite_output_dir, exit status 2, and
    every file in it stays byte-identical, with nothing added (in process, through the script's main)."""
    out = tmp_path / "used"
    out.mkdir()
    (out / "config.json").write_text(open(MODEL_CONFIG).read())
    (out / "model.safetensors").write_bytes(os.urandom(4096))
    (out / "all_results.json").write_text(json.dumps({"eval_loss": 5.0}))
    before = digests(out)
    monkeypatch.setattr(sys, "argv", mlm_command(train_file, out, "--max_steps", "2")[1:])
    with pytest.raises(SystemExit) as exc:
        load_cli(MLM_SCRIPT).main()
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (f"run_mlm_sift.py: error: Output directory ({out}) already exists and "
                                               "is not empty. Use --overwrite_output_dir to overcome.")
    assert digests(out) == before


def test_the_last_checkpoint_rule():
    """``last_checkpoint_to_resume`` against run_mlm.py's rule, in process."""
    from types import SimpleNamespace

    cli = load_cli(MLM_SCRIPT)

    def rule(folder, **kw):
        args = dict(output_dir=str(folder), do_train=True, overwrite_output_dir=False, resume_from_checkpoint=None)
        return cli.last_checkpoint_to_resume(SimpleNamespace(**{**args, **kw}))

    with tempfile.TemporaryDirectory() as tmp:
        assert rule(os.path.join(tmp, "new")) is None and rule(tmp) is None  # absent, empty
        for step in (2, 10):
            os.makedirs(os.path.join(tmp, f"checkpoint-{step}"))
        assert rule(tmp) == os.path.join(tmp, "checkpoint-10")  # by step, not by name
        assert rule(tmp, overwrite_output_dir=True) is None and rule(tmp, do_train=False) is None
        with pytest.raises(ValueError, match="no such checkpoint directory"):
            rule(tmp, resume_from_checkpoint=os.path.join(tmp, "checkpoint-7"))
        for step in (2, 10):
            os.rmdir(os.path.join(tmp, f"checkpoint-{step}"))
        open(os.path.join(tmp, "notes.txt"), "w").close()
        with pytest.raises(ValueError, match="Use --overwrite_output_dir"):
            rule(tmp)
        assert rule(tmp, overwrite_output_dir=True) is None


def test_a_run_mlm_command_line_from_a_model_directory(train_file, tmp_path, monkeypatch):
    """run_mlm.py's fine-tuning form: --model_name_or_path alone (no --config_name, --tokenizer_name),
    --line_by_line with --pad_to_max_length, --max_train_samples / --max_eval_samples, in process."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    model_dir = tmp_path / "model"
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    config = AutoConfig.from_pretrained(MODEL_CONFIG, vocab_size=len(tokenizer))
    AutoModelForMaskedLM.from_config(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [MLM_SCRIPT, "--model_name_or_path", str(model_dir), "--train_file", train_file,
                                      "--line_by_line", "--pad_to_max_length", "--max_seq_length", "32",
                                      "--max_train_samples", "24", "--max_eval_samples", "4", "--do_train", "--do_eval",
                                      "--output_dir", str(out), "--per_device_train_batch_size", "4", "--max_steps", "2",
                                      "--warmup_steps", "2", "--logging_steps", "1", "--use_cpu", "--report_to", "none",
                                      "--sift_config", json.dumps({"selection_start_step": 1, "kernel": "torch"})])
    cli = load_cli(MLM_SCRIPT)
    monkeypatch.setitem(sys.modules, cli.__name__, cli)  # Trainer pickles the script's TrainingArguments class
    cli.main()
    results = json.load(open(out / "all_results.json"))
    assert results["train_samples"] == 24 and results["eval_samples"] == 4 and math.isfinite(results["eval_loss"])
    state = json.load(open(out / "trainer_state.json"))
    assert state["global_step"] == 2 and state["log_history"][0]["sift/kept_fraction"] == 0.5


BAD_INPUTS = {
    "malformed JSON": (["--sift_config", "{bad"], "--sift_config is not valid JSON"),
    "unknown key": (["--sift_config", '{"keepratio": 0.5}'], "keepratio"),
    "wrong type": (["--sift_config", '{"exit_layer": "one"}'], "sift.exit_layer must be of type int"),
    "a list": (["--sift_config", "[1, 2]"], "--sift_config must be a JSON object"),
    "keep_ratio not dividing the batch": (["--sift_config", '{"keep_ratio": 0.3}'],
                                          "sift.keep_ratio=0.3 with per_device_train_batch_size=4"),
    "no --do_train / --do_eval": (["--do_train", "false", "--do_eval", "false"], "give --do_train and/or --do_eval"),
    "a missing train file": (["--train_file", "missing.txt"], "--train_file missing.txt: file not found"),
    "a missing checkpoint": (["--resume_from_checkpoint", "nowhere"], "--resume_from_checkpoint nowhere: no such"),
    "streaming": (["--streaming"], "--streaming is not supported"),
    "a sequence beyond the positions": (["--max_seq_length", "600"], "max_position_embeddings \\(512\\)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_status_2(case, train_file, tmp_path, monkeypatch, capsys):
    """Each start-up error of run_mlm_sift.py is one line naming the flag or key, exit status 2 (in
    process: the checks run before any training)."""
    extra, message = BAD_INPUTS[case]
    cli = load_cli(MLM_SCRIPT)
    monkeypatch.setattr(sys, "argv", mlm_command(train_file, tmp_path / "out", *extra)[1:])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("run_mlm_sift.py: error: "), err
    assert re.search(message, err[0]), err[0]
    assert not os.path.exists(tmp_path / "out")


def test_text_files_split_and_hold_out_as_run_mlm(tmp_path):
    """--sample_by line (the default, run_mlm.py's) gives one text per line, paragraph one per
    blank-line-separated paragraph (the pretraining job's default); without a validation file the
    first --validation_split_percentage of the texts are held out, as run_mlm.py's "train[:5%]"."""
    from types import SimpleNamespace

    cli = load_cli(MLM_SCRIPT)
    path = tmp_path / "t.txt"
    path.write_text("".join(f"line {i}\n" + ("\n" if i % 2 else "") for i in range(40)))
    model = SimpleNamespace(cache_dir=str(tmp_path / "cache"), token=None)

    def texts(sample_by):
        data = SimpleNamespace(dataset_name=None, train_file=str(path), validation_file=None, sample_by=sample_by,
                               validation_split_percentage=10)
        raw = cli.load_raw_datasets(model, data)
        return list(raw["validation"]["text"]), list(raw["train"]["text"])

    held, train = texts("line")  # 60 lines, the blank ones too (as run_mlm.py reads them)
    assert held == ["line 0", "line 1", "", "line 2", "line 3", ""] and len(train) == 54
    held, train = texts("paragraph")
    assert held == ["line 0\nline 1", "line 2\nline 3"] and len(train) == 18


def test_a_model_without_a_built_in_adapter_is_told_what_to_pass(tmp_path):
    """SiftTrainer(adapter=...) on a family without a built-in adapter: the masked-positions-only
    head cannot be placed, and the error says to pass sparse_mlm_head=False, which then works."""
    from types import SimpleNamespace

    from transformers import AlbertConfig, AlbertForMaskedLM, TrainingArguments

    from sift_ds.hf import SiftTrainer

    model = AlbertForMaskedLM(AlbertConfig(vocab_size=97, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4,
                             warmup_steps=10)
    adapter = SimpleNamespace(num_layers=2)  # the user's adapter (the error comes before it is used)
    with pytest.raises(TypeError, match=r"AlbertForMaskedLM .*pass sparse_mlm_head=False \(adapter= serves the "
                                        r"early exit only\)"):
        SiftTrainer(model=model, args=args, adapter=adapter, sift={"kernel": "torch"})
    with pytest.raises(TypeError, match=r"pass sparse_mlm_head=False \(and adapter= an object implementing"):
        SiftTrainer(model=model, args=args, sift={"kernel": "torch"})
    trainer = SiftTrainer(model=model, args=args, adapter=adapter, sift={"kernel": "torch"}, sparse_mlm_head=False)
    assert trainer.sift_adapter is adapter


def test_step_masks_are_the_collators_own_drawn_per_step():
    """StepMasking masks a padded batch exactly as DataCollatorForLanguageModeling's own call does
    with a generator seeded by (seed, step, micro-step, rank); another step draws other masks."""
    import copy

    import torch
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from sift_ds.hf_masking import MASK_STREAM, PaddingOnly, StepMasking, masks_per_step
    from sift_ds.seeding import derive_seed

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, pad_to_multiple_of=8)
    examples = [tokenizer(t, return_special_tokens_mask=True) for t in ["a short text", "x " * 40, "def f(): pass"]]
    assert masks_per_step(collator)
    masked = StepMasking(collator, seed=7)(PaddingOnly(collator)(examples), 5, 1, 0)
    reference = copy.copy(collator)
    reference.generator = torch.Generator().manual_seed(derive_seed(7, MASK_STREAM, 5, 1, 0))
    expected = reference(examples)
    assert set(masked) == set(expected) and masked["input_ids"].shape[1] % 8 == 0
    assert all(torch.equal(masked[k], expected[k]) for k in expected)
    other = StepMasking(collator, seed=7)(PaddingOnly(collator)(examples), 6, 1, 0)
    assert not torch.equal(other["labels"], masked["labels"])
    assert collator.generator is None  # the user's collator is left as it was


def test_the_shipped_trainer_config_gives_its_sift_section_and_hides_it_from_deepspeed():
    """ds_configs/hf/zero2_sift.json (Trainer fills its "auto" values): its "sift" section is what
    sift_config_for reads, and the config DeepSpeed would get has none."""
    from types import SimpleNamespace

    from sift_ds import SiftConfig, load_ds_config
    from sift_ds.hf import sift_config_for
    path = os.path.join(REPO, "ds_configs", "hf", "zero2_sift.json")
    shipped = load_ds_config(path)
    handed = SimpleNamespace(config=dict(shipped))
    cfg = sift_config_for(None, SimpleNamespace(deepspeed=path, hf_deepspeed_config=handed))
    assert cfg == SiftConfig(**shipped["sift"]) and "sift" not in handed.config
    assert shipped["train_micro_batch_size_per_gpu"] == "auto"  # Trainer's per_device_train_batch_size
