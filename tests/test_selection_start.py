"""Where selection starts, tied to the learning-rate schedule: ``sift.selection_start_step`` "auto"
resolved against each front-end's warm-up (checked against numbers computed by hand), the refusal of a
start at or after the learning-rate peak in every front-end (the pretraining job, sift_ds.initialize,
SiftTrainer, the Megatron drop-in), the deliberate key, and the old key names as aliases. Start-up
refusals only: nothing trains."""
import argparse
import types

import pytest
import torch

import sift_ds
from launch_helpers import config_file, load_cli, one_line_error, set_key
from sift_ds import SiftConfig
from sift_ds.schedule import ds_config_warmup, resolve_selection_start, scheduler_warmup
from tiny import ds_config, mlm_batch, tiny_bert

cli = load_cli()
PEAK = "at or after the learning-rate peak"


def with_schedule(warmup_num_steps, **sift):
    cfg = ds_config(micro=4)
    cfg["sift"] = {"exit_layer": 1, **sift}
    cfg["scheduler"] = {"type": "WarmupDecayLR",
                        "params": {"total_num_steps": 100, "warmup_num_steps": warmup_num_steps, "warmup_max_lr": 1e-3}}
    return cfg


# ---------------------------------------------------------------- the rule
@pytest.mark.parametrize("warmup,share,start", [
    (100, 0.3, 30),    # the studies: selection from step 30 of a 100-step warm-up
    (1600, 0.3, 480),  # BERT-base: 0.2 % of 800,000 steps
    (5, 0.3, 2),       # 1.5: halves round up
    (15, 0.3, 5),      # 4.5
    (1, 0.3, 1),       # DeepSpeed warms up over at least 2 steps: 0.6
    (10, 0.5, 5),
    (10, 0.0, 0),
])
def test_auto_is_a_share_of_the_deepspeed_warmup(warmup, share, start):
    steps, _ = ds_config_warmup(with_schedule(warmup))
    resolved = resolve_selection_start(SiftConfig(selection_start_share=share), steps, "test")
    assert resolved.selection_start_step == start and resolved.start_step == start


def test_schedules_without_a_warmup_peak_at_step_0():
    assert ds_config_warmup({})[0] == 0  # no scheduler: a constant learning rate
    assert ds_config_warmup({"scheduler": {"type": "WarmupLR", "params": {}}})[0] == 1000  # DeepSpeed's default
    assert ds_config_warmup({"scheduler": {"type": "OneCycle", "params": {"cycle_first_step_size": 50}}})[0] == 50
    assert ds_config_warmup({"scheduler": {"type": "LRRangeTest", "params": {}}})[0] is None
    with pytest.raises(ValueError, match=f"{PEAK} .step 0: the ds_config has no scheduler"):
        resolve_selection_start(SiftConfig(), *ds_config_warmup({}))
    off = resolve_selection_start(SiftConfig(enabled=False), None, "unknown")  # nothing selects: no check
    assert off.selection_start_step == 0


def test_the_deliberate_key_and_the_old_name():
    with pytest.raises(ValueError, match=f'selection_start_step=10 starts selection {PEAK} .step 10: test.*"auto": '
                                         "step 3.*sift.start_after_lr_peak true"):
        resolve_selection_start(SiftConfig(selection_start_step=10), 10, "test")
    assert resolve_selection_start(SiftConfig(selection_start_step=9), 10, "test").start_step == 9
    late = resolve_selection_start(SiftConfig(selection_start_step=10, start_after_lr_peak=True), 10, "test")
    assert late.start_step == 10
    assert SiftConfig.from_dict({"warmup_steps": 7}) == SiftConfig(selection_start_step=7) == SiftConfig(warmup_steps=7)
    assert "warmup_steps" not in SiftConfig(warmup_steps=7).to_dict()
    with pytest.raises(ValueError, match="sift.warmup_steps is the old name of sift.selection_start_step"):
        SiftConfig.from_dict({"warmup_steps": 7, "selection_start_step": 7})
    with pytest.raises(ValueError, match='selection_start_step is "auto", which needs the learning-rate warm-up'):
        SiftConfig().selecting(5)  # never silently "step 0"


# ---------------------------------------------------------------- sift_ds.initialize
def test_initialize_refuses_a_start_at_the_peak_before_deepspeed_starts():
    with pytest.raises(ValueError, match=f"selection_start_step=10 starts selection {PEAK} .step 10: WarmupDecayLR"):
        sift_ds.initialize(model=tiny_bert(), config=with_schedule(10, selection_start_step=10))
    constant = {k: v for k, v in with_schedule(10).items() if k != "scheduler"}
    with pytest.raises(ValueError, match='"auto" .step 0. starts selection .* no scheduler'):
        sift_ds.initialize(model=tiny_bert(), config=constant)
    with pytest.raises(ValueError, match="unknown here .the lr_scheduler passed to sift_ds.initialize.: give "
                                         "sift.selection_start_step as a step number"):
        sift_ds.initialize(model=tiny_bert(), config=constant, lr_scheduler=lambda optimizer: None)


def test_a_wrapped_engine_reads_its_schedulers_warmup():
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    assert scheduler_warmup(WarmupDecayLR(optimizer, total_num_steps=100, warmup_num_steps=40))[0] == 40
    assert scheduler_warmup(None)[0] == 0 and scheduler_warmup(object())[0] is None


# ---------------------------------------------------------------- the pretraining job
def test_the_job_resolves_auto_against_its_warmup_and_refuses_the_peak(tmp_path, capsys):
    config = config_file(tmp_path)  # the tiny config: "auto", a 100-step learning-rate warm-up
    common = ["--ds_config", config, "--output_dir", str(tmp_path / "o")]
    assert cli.resolve(common).sift.selection_start_step == 30
    assert cli.resolve(common + ["--lr_warmup_steps", "20"]).sift.selection_start_step == 6
    assert cli.resolve(common + ["--warmup_steps", "20"]).sift.selection_start_step == 6  # the old flag
    # the job's own warm-up rule: 0.2 % of --max_steps when the scheduler says "auto"
    auto = config_file(tmp_path, set_key(("scheduler", "params", "warmup_num_steps"), "auto"))
    assert cli.resolve(["--ds_config", auto, "--output_dir", str(tmp_path / "o"), "--max_steps", "100000"]
                       ).sift.selection_start_step == 60  # 0.3 x 200
    err = one_line_error(capsys, common + ["--lr_warmup_steps", "20", "--sift_warmup_steps", "25"])
    assert (f"sift.selection_start_step=25 starts selection {PEAK} (step 20: WarmupDecayLR warmup_num_steps 20 "
            "(set by --lr_warmup_steps))") in err
    err = one_line_error(capsys, common + ["--max_steps", "100000", "--sift_selection_start_step", "480",
                                           "--ds_config", auto])
    assert f"sift.selection_start_step=480 starts selection {PEAK} (step 200" in err
    late = cli.resolve(common + ["--lr_warmup_steps", "20", "--sift_warmup_steps", "25", "--sift_start_after_lr_peak",
                                 "true"])
    assert late.sift.selection_start_step == 25 and late.ds_config["sift"]["selection_start_step"] == 25
    err = one_line_error(capsys, common + ["--sift_warmup_steps", "5", "--sift_selection_start_step", "6"])
    assert "sift.warmup_steps is the old name of sift.selection_start_step" in err
    legacy = config_file(tmp_path, set_key(("pretrain", "warmup_steps"), 20))  # the old key in the "pretrain" section
    assert cli.resolve(["--ds_config", legacy, "--output_dir", str(tmp_path / "o")]).options.lr_warmup_steps == 20


# ---------------------------------------------------------------- SiftTrainer
def trainer(tmp_path, sift=None, user_scheduler=False, **training):
    pytest.importorskip("accelerate", reason="Trainer needs accelerate (the hf extra)")
    from transformers import TrainingArguments, default_data_collator

    from sift_ds.hf import SiftTrainer

    rows = mlm_batch(16, seed=1)
    data = [{k: v[i] for k, v in rows.items()} for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, use_cpu=True, report_to=[],
                             save_strategy="no", disable_tqdm=True, **training)
    model = tiny_bert(layers=2)
    optimizers = (None, None)
    if user_scheduler:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        optimizers = (optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    return SiftTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
                       sift={"kernel": "torch", **(sift or {})}, optimizers=optimizers)


def test_sifttrainer_resolves_auto_against_trainers_warmup(tmp_path):
    assert trainer(tmp_path, max_steps=100, warmup_steps=10).sift_config.selection_start_step == 3
    assert trainer(tmp_path, max_steps=100, warmup_steps=0.2).sift_config.selection_start_step == 6  # a ratio: 20
    with pytest.raises(ValueError, match=f'"auto" .step 0. starts selection {PEAK} .step 0: TrainingArguments '
                                         "warmup_steps 0"):
        trainer(tmp_path, max_steps=100)
    with pytest.raises(ValueError, match=f"selection_start_step=10 starts selection {PEAK} .step 10"):
        trainer(tmp_path, {"selection_start_step": 10}, max_steps=100, warmup_steps=10)
    with pytest.raises(ValueError, match="lr_scheduler_type constant has no warm-up"):
        trainer(tmp_path, max_steps=100, warmup_steps=10, lr_scheduler_type="constant")
    with pytest.raises(ValueError, match="unknown here .the lr_scheduler passed to Trainer as optimizers=."):
        trainer(tmp_path, user_scheduler=True, max_steps=100)
    assert trainer(tmp_path, {"selection_start_step": 10, "start_after_lr_peak": True}, max_steps=100,
                   warmup_steps=10).sift_config.start_step == 10


def test_sifttrainer_checks_an_epoch_run_before_its_first_step(tmp_path):
    """Without max_steps the run length (16 rows, gross batches of 4: 4 steps) is known only in train():
    refused there, before any step."""
    run = trainer(tmp_path, num_train_epochs=1)
    with pytest.raises(ValueError, match=f"{PEAK} .step 0: TrainingArguments warmup_steps 0 over 4 steps"):
        run.train()
    assert run.state.global_step == 0


# ---------------------------------------------------------------- the Megatron drop-in
@pytest.fixture
def megatron_args(monkeypatch):
    """Megatron-LM's parsed arguments (``megatron.training.get_args``; megatron-core alone has none)."""
    pytest.importorskip("megatron.core", reason="needs the megatron-core test extra")
    args = argparse.Namespace(train_iters=100000, lr_warmup_iters=1600, lr_warmup_fraction=None, lr_decay_iters=None,
                              global_batch_size=256)
    monkeypatch.setitem(__import__("sys").modules, "megatron.training",
                        types.SimpleNamespace(get_args=lambda: args))
    return args


def test_megatron_resolves_auto_against_its_warmup_and_refuses_the_peak(megatron_args):
    from sift_ds.megatron import Sift

    def provider(num_samples):
        return list(range(num_samples[0])), None, None

    assert Sift(SiftConfig()).selection_config.selection_start_step == 480  # 0.3 x --lr-warmup-iters 1600
    megatron_args.lr_warmup_fraction = 0.01  # of --train-iters: 1000 iterations
    assert Sift(SiftConfig()).selection_config.selection_start_step == 300
    megatron_args.train_iters, megatron_args.train_samples, megatron_args.lr_warmup_fraction = None, 2_560_000, None
    megatron_args.lr_warmup_samples = 25_600  # 100 iterations of 256 samples
    assert Sift(SiftConfig()).selection_config.selection_start_step == 30
    wrapped = Sift(SiftConfig(selection_start_step=100)).datasets_provider(provider)
    with pytest.raises(ValueError, match=f"selection_start_step=100 starts selection {PEAK} .step 100: "
                                         "--lr-warmup-samples 25600 at --global-batch-size 256"):
        wrapped([8, 0, 0])  # at start-up: Megatron builds the datasets before the first iteration


def test_megatron_auto_without_megatron_lm_asks_for_a_step():
    pytest.importorskip("megatron.core", reason="needs the megatron-core test extra")
    from sift_ds.megatron import Sift

    with pytest.raises(ValueError, match="unknown here .Megatron-LM's arguments are not available"):
        Sift(SiftConfig()).selection_config  # noqa: B018
    assert Sift(SiftConfig(selection_start_step=5)).selection_config.start_step == 5
