"""launch/pretrain_bert.py start-up: argument handling, the ds_config "pretrain" section, and one
clear line for each configuration error; every shipped ds_config resolves."""
import glob
import json
import os

import pytest
import torch

from launch_helpers import CONFIGS, GPT_SCRIPT, REPO, load_cli, read_config, run_python, set_key, write_config

cli = load_cli()
gpt_cli = load_cli(GPT_SCRIPT)


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def tiny(tmp_path, edit=None, name="cfg.json"):
    config = read_config("tiny_cpu_sift.json")
    if edit:
        edit(config)
    return write_config(tmp_path / name, config)


def error_of(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.resolve(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


# ---------------------------------------------------------------------------------------- arguments
def test_pretrain_section_supplies_defaults_and_the_command_line_wins(tmp_path):
    cfg = tiny(tmp_path)
    args = cli.parse_args(["--ds_config", cfg, "--output_dir", str(tmp_path / "o")])
    assert (args.model, args.seq_len, args.vocab_size, args.max_steps) == ("tiny", 128, 4096, 400)
    args = cli.parse_args(["--ds_config", cfg, "--seq_len", "64", "--output_dir", str(tmp_path / "o"),
                           "--data", "a.txt", "--data", "b.txt"])
    assert args.seq_len == 64 and args.data == ["a.txt", "b.txt"] and args.model == "tiny"


@pytest.mark.parametrize("flags", [["--deepspeed_config"], ["--deepspeed"], ["--deepspeed", "--deepspeed_config"]])
def test_deepspeed_config_aliases(tmp_path, flags):
    cfg = tiny(tmp_path)
    argv = [*flags[:-1], flags[-1], cfg, "--local_rank=1", "--output_dir", str(tmp_path / "o")]
    args = cli.parse_args(argv)
    assert args.ds_config == cfg and args.local_rank == 1 and args.model == "tiny"


def test_plan_resolves_batch_schedule_and_monitors(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = str(tmp_path / "run")
    plan = cli.resolve(["--ds_config", tiny(tmp_path), "--output_dir", out, "--sift_keep_ratio", "0.25"])
    assert (plan.world_size, plan.batch.micro, plan.batch.grad_accum, plan.batch.total) == (2, 16, 1, 32)
    assert plan.gross_batch == 64 and plan.sift.keep_ratio == 0.25 and plan.ds_config["sift"]["keep_ratio"] == 0.25
    params = plan.ds_config["scheduler"]["params"]
    assert params["total_num_steps"] == plan.max_steps == 400
    assert params["warmup_max_lr"] == plan.ds_config["optimizer"]["params"]["lr"]
    assert plan.ds_config["tensorboard"]["output_path"] == os.path.join(out, "tensorboard")
    assert "pretrain" not in plan.ds_config and os.path.isdir(out) and plan.resume is None


def test_default_optimizer_is_the_papers_adamw_with_0_2_percent_warmup(tmp_path):
    def strip(c):
        del c["optimizer"], c["scheduler"]

    plan = cli.resolve(["--ds_config", tiny(tmp_path, strip), "--max_steps", "5000", "--output_dir", str(tmp_path / "o")])
    on_cpu = plan.ds_config["optimizer"]["params"].pop("torch_adam", False)
    assert on_cpu == (cli.resolve_plan.__globals__["get_accelerator"]().device_name() == "cpu")  # exact resume
    assert plan.ds_config["optimizer"] == {
        "type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.01}}
    assert plan.ds_config["scheduler"] == {"type": "WarmupDecayLR", "params": {
        "total_num_steps": 5000, "warmup_num_steps": 10, "warmup_max_lr": 1e-4, "warmup_type": "linear"}}


def test_warmup_steps_sets_the_schedulers_warmup_and_the_lr_follows_it(tmp_path):
    """--warmup_steps replaces the ds_config's warmup_num_steps; the scheduler DeepSpeed builds from
    the resolved config then ramps linearly to the peak over exactly that many steps and decays to zero
    at max_steps (checked against the formula, not the config)."""
    from deepspeed.runtime.lr_schedules import WarmupDecayLR
    plan = cli.resolve(["--ds_config", tiny(tmp_path), "--max_steps", "40", "--warmup_steps", "8",
                        "--output_dir", str(tmp_path / "o")])
    params = plan.ds_config["scheduler"]["params"]
    assert params["warmup_num_steps"] == 8 and params["total_num_steps"] == 40
    peak = plan.ds_config["optimizer"]["params"]["lr"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    schedule = WarmupDecayLR(optimizer, **params)
    lrs = []
    for _ in range(40):  # the lr of iterations 0..39
        schedule.step()
        lrs.append(schedule.get_lr()[0])
    expected = [peak * (t / 8 if t <= 8 else (40 - t) / (40 - 8)) for t in range(40)]
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.json"))), ids=os.path.basename)
def test_every_shipped_config_resolves(path, tmp_path, monkeypatch):
    cpu = "_cpu" in path
    monkeypatch.chdir(REPO)  # model config paths in the study configs are relative to the checkout
    causal = read_config(os.path.basename(path))["pretrain"].get("objective") == "clm"
    consent = [] if cpu else ["--allow_embedded_corpus", "true"]  # the GPU configs' models want the user's corpus
    args = (gpt_cli if causal else cli).parse_args(["--ds_config", path, "--output_dir", str(tmp_path / "o"), *consent])
    plan = cli.resolve_plan(args, world_size=2 if cpu else 8, accelerator="cpu" if cpu else "cuda")
    if "_sift" in path:
        assert plan.sift.enabled and plan.gross_batch == 2 * plan.batch.micro
        twin = read_config(os.path.basename(path).replace("_sift_experiment", "_vanilla").replace("_sift", "_vanilla"))
        mine = read_config(os.path.basename(path))
        for config in (twin, mine):  # the twins differ in the sift section and the run's names only
            config.pop("sift"), config["tensorboard"].pop("job_name"), config["pretrain"].pop("output_dir")
            config.pop("_comment", None)  # an experiment says so in its own note
        assert twin == mine
    elif "_study" in path:  # the study configs: the study's best setting (docs/results.md); arms override it
        assert plan.sift.enabled and plan.sift.criterion == "entropy" and plan.sift.sampling == "topk"
        assert plan.gross_batch == 2 * plan.batch.micro and plan.world_size == 2
        if plan.sift.anneal_end_step:  # annealed to full data over the second half of the schedule
            assert 2 * plan.sift.anneal_start_step == plan.sift.anneal_end_step == plan.max_steps
    else:
        assert not plan.sift.enabled and plan.gross_batch == plan.batch.micro
    if "bert_base" in path:
        assert plan.batch.micro == 32 and args.seq_len == 512 and args.model == "base"


# ---------------------------------------------------------------------------------------- errors
_set = set_key


ERRORS = [
    # (ds_config edit, extra argv, world size, expected message)
    (None, ["--ds_config", "{tmp}/missing.json"], 1, "ds_config file not found: {tmp}/missing.json"),
    (_set(["train_batch_size"], 64), [], 2,
     "batch sizes do not add up: train_micro_batch_size_per_gpu=16 x gradient_accumulation_steps=1 x world size 2"
     " = 32, but train_batch_size=64"),
    (_set(["train_micro_batch_size_per_gpu"], 0), [], 1, "ds_config train_micro_batch_size_per_gpu must be a positive integer, got 0"),
    (_set(["sift", "keep_ratio"], 0.3), [], 1, "gives a gross batch of 53.3333 rows per rank; it must be a whole number"),
    (None, ["--sift_keep_ratio", "1.5"], 1, "sift.keep_ratio must be in (0, 1], got 1.5 (set by --sift_keep_ratio)"),
    (None, ["--sift_exit_layer", "3"], 1, "sift.exit_layer=3 exceeds the model's depth (2 encoder layers)"),
    (_set(["sift", "budget"], 1), [], 1, "ds_config 'sift' section: unknown key 'budget'"),
    (_set(["fp16"], {"enabled": True}), [], 1, "DeepSpeed does not support fp16 on the CPU accelerator"),
    (None, ["--seq_len", "1024"], 1, "--seq_len 1024 exceeds the model's max_position_embeddings (512)"),
    (None, ["--seq_len", "4"], 1, "--seq_len 4 is too short (at least 8)"),
    (None, ["--model", "huge"], 1, "--model 'huge' is neither a preset (tiny, mini, small, medium, base, large, tiny_roberta"),
    (None, ["--data", "{tmp}/nope.txt"], 1, "--data {tmp}/nope.txt: file not found"),
    (None, ["--data", "{tmp}/*.none"], 1, "--data {tmp}/*.none: no file matches the glob"),
    (None, ["--data", "{tmp}/empty.txt"], 1, "empty corpus: every --data file is empty ({tmp}/empty.txt)"),
    (None, ["--data", "{tmp}/empty.txt", "--dataset_name", "wikitext"], 1, "give either --data or --dataset_name, not both"),
    (None, ["--tokenizer", "./no/such/tokenizer"], 1, "--tokenizer ./no/such/tokenizer: no such file or directory"),
    (None, ["--resume", "{tmp}/nowhere"], 1, "--resume {tmp}/nowhere: no such checkpoint directory"),
    (None, ["--resume", "{tmp}"], 1, "--resume {tmp}: not a DeepSpeed checkpoint"),
    (_set(["pretrain", "max_steps"], None), [], 1, "--max_steps is required: the ds_config scheduler leaves total_num_steps auto"),
    (_set(["pretrain", "epochs"], 3), [], 1, "ds_config 'pretrain' section: unknown key 'epochs'"),
    (None, ["--val_fraction", "1.5"], 1, "--val_fraction must be in (0, 1), got 1.5"),
    (None, ["--log_interval", "0"], 1, "--log_interval must be > 0, got 0"),
    (None, ["--warmup_steps", "-1"], 1, "--lr_warmup_steps must be > 0, got -1"),  # the old name of the flag
    (None, ["--lr_warmup_steps", "400"], 1, "--lr_warmup_steps 400 must be below max_steps (400)"),
    (_set(["scheduler", "params", "warmup_min_lr"], "auto"), [], 1, "'auto' is not supported for these keys"),
]


@pytest.mark.parametrize("edit,argv,world,message", ERRORS, ids=[e[-1][:40] for e in ERRORS])
def test_configuration_errors_are_one_clear_line(tmp_path, monkeypatch, capsys, edit, argv, world, message):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    (tmp_path / "empty.txt").write_text("")
    tmp = str(tmp_path)
    argv = [a.replace("{tmp}", tmp) for a in argv]
    base = [] if "--ds_config" in argv else ["--ds_config", tiny(tmp_path, edit)]
    err = error_of(capsys, base + argv + ["--output_dir", str(tmp_path / "out")])
    assert err.startswith("pretrain_bert.py: error: ")
    assert message.replace("{tmp}", tmp) in err


MODEL_CONFIGS = [  # (file written under tmp -- None: an empty directory --, its JSON, --model, message)
    ("array.json", [{"model_type": "bert"}], "array.json", "the config must be a JSON object, got a JSON list"),
    ("gpt2.json", {"model_type": "gpt2"}, "gpt2.json", "model_type 'gpt2' is not a masked-LM model"),
    ("albert.json", {"model_type": "albert"}, "albert.json", "model_type 'albert' has no built-in early-exit adapter"),
    ("no_type.json", {"hidden_size": 64}, "no_type.json", "the config names no model_type (None)"),
    ("google/bert_config.json", {"hidden_size": 64}, "google", "no config.json in that directory"),
    (None, None, "empty", "no config.json in that directory"),
]


@pytest.mark.parametrize("file,spec,model,message", MODEL_CONFIGS, ids=[c[2] for c in MODEL_CONFIGS])
def test_model_config_errors_are_one_line(tmp_path, capsys, file, spec, model, message):
    if file is None:
        (tmp_path / model).mkdir()
    else:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text(json.dumps(spec))
    err = error_of(capsys, ["--ds_config", tiny(tmp_path), "--model", str(tmp_path / model),
                            "--output_dir", str(tmp_path / "o")])
    assert f"--model {tmp_path / model}: {message}" in err


def test_model_takes_family_presets_and_hf_configs(tmp_path):
    from transformers import RobertaConfig

    RobertaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "roberta")
    for model, kind in (("tiny_modernbert", "modernbert"), (str(tmp_path / "roberta"), "roberta"),
                        (str(tmp_path / "roberta" / "config.json"), "roberta")):
        plan = cli.resolve(["--ds_config", tiny(tmp_path), "--model", model, "--output_dir", str(tmp_path / "o")])
        assert plan.model_config.model_type == kind and plan.model_config.num_hidden_layers == 2
    assert not any("sparse_mlm_head" in note for note in plan.notes)  # every family has the sparse head


def test_argparse_rejects_bad_choices(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--ds_config", tiny(tmp_path), "--objective", "xlm"])
    assert "argument --objective: invalid choice: 'xlm'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the causal objective is the other program's
        cli.parse_args(["--ds_config", tiny(tmp_path), "--objective", "clm"])
    assert capsys.readouterr().err == ("pretrain_bert.py: error: --objective clm: pretrain_bert.py trains mlm / mlm+nsp; "
                                       "use launch/pretrain_gpt.py for causal LMs (clm)\n")
    with pytest.raises(SystemExit):
        cli.parse_args(["--ds_config", tiny(tmp_path), "--sift_enabled", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


@pytest.mark.parametrize("key,value,message", [
    ("seq_len", "long", "seq_len must be int, got 'long'"),
    ("seq_len", 1.5, "seq_len must be int, got 1.5"),
    ("sparse_mlm_head", 1, "sparse_mlm_head must be bool, got 1"),
    ("objective", "xlm", "objective must be one of ['mlm', 'mlm+nsp', 'clm'], got 'xlm'"),
    ("data", ["a.txt", 3], "data must be str, got 3"),
    ("local_rank", 1, "unknown key 'local_rank'"),
])
def test_bad_value_in_the_pretrain_section_is_one_line_naming_the_key(tmp_path, capsys, key, value, message):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--ds_config", tiny(tmp_path, _set(["pretrain", key], value))])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pretrain_bert.py: error: ds_config 'pretrain' section: ") and message in err


def test_every_sift_config_field_has_a_flag(tmp_path):
    """The --sift_* flags are generated from SiftConfig and every registered criterion's keys, so a new
    field cannot be missed; a criterion's flag sets its key in the criterion's section."""
    import dataclasses

    from sift_ds import SiftConfig
    from sift_ds.criteria import criterion_class, criterion_names

    (tmp_path / "scores.npz").write_bytes(b"")
    values = {"enabled": "false", "criterion": "stored", "exit_layer": "2", "keep_ratio": "0.25",
              "selection_start_step": "7", "selection_start_share": "0.5", "start_after_lr_peak": "true",
              "scope": "local", "kernel": "torch", "seed": "9", "anneal_end_step": "50",
              "random_fraction": "0.25", "sampling": "rank", "outlier_fraction": "0.05", "anneal_start_step": "20",
              "max_positions": "16", "score_file": str(tmp_path / "scores.npz"), "score_name": "unique_share"}
    others = {"frequency_baseline": "unigram", "frequency_table": "counts.npy", "baseline_decay": "0.5",
              "importance_mix": "0.25", "reference": "ref"}  # keys of the other criteria: flags too
    keys = {f.name for f in dataclasses.fields(SiftConfig)} - {"options"}
    keys |= {f.name for name in criterion_names() for f in dataclasses.fields(criterion_class(name).Options)}
    assert set(values) | set(others) | {"warmup_steps"} == keys  # and the old name
    argv = ["--ds_config", tiny(tmp_path), "--output_dir", str(tmp_path / "o")]
    parsed = cli.parse_args([*argv, *(w for k, v in others.items() for w in (f"--sift_{k}", v))])
    assert dict(parsed.sift) == {**others, "baseline_decay": 0.5, "importance_mix": 0.25}
    for key, value in values.items():
        argv += [f"--sift_{key}", value]
    plan = cli.resolve(argv)
    assert plan.sift == SiftConfig(enabled=False, criterion="stored", exit_layer=2, keep_ratio=0.25,
                                   selection_start_step=7, selection_start_share=0.5, start_after_lr_peak=True,
                                   scope="local", kernel="torch", seed=9, anneal_end_step=50,
                                   random_fraction=0.25, sampling="rank", outlier_fraction=0.05,
                                   anneal_start_step=20, max_positions=16,
                                   options={"score_file": str(tmp_path / "scores.npz"), "score_name": "unique_share"})


def test_errors_after_start_up_are_one_line_too(tmp_path):
    """A real process: a JSON-lines corpus without the text field fails once loaded, with one line."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"body": "hello"}) + "\n")
    proc = run_python(["--ds_config", tiny(tmp_path), "--data", corpus, "--cache_dir", tmp_path / "cache",
                       "--output_dir", tmp_path / "out"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pretrain_bert.py: error: {corpus} has no text field 'text' (--text_field); its fields are ['body']")
