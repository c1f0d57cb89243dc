"""Every bad "sift" value is rejected by sift_ds.initialize with a ValueError naming the key."""
import json

import pytest

import sift_ds
from tiny import ds_config, tiny_bert


def test_defaults_are_the_measured_best_criterion_with_the_papers_selection():
    """Entropy at exit 1 (docs/results.md, "Choosing a criterion"), keep half, strict top-k."""
    cfg = sift_ds.SiftConfig()
    assert (cfg.enabled, cfg.criterion, cfg.exit_layer, cfg.keep_ratio, cfg.scope) == (True, "entropy", 1, 0.5, "global")
    assert cfg.plain_topk
    assert cfg.gross_batch_size(32) == 64


BAD = [
    ({"enabled": "yes"}, "sift.enabled"),
    ({"enabled": 1}, "sift.enabled"),
    ({"criterion": "mse"}, "sift.criterion"),
    ({"exit_layer": 0}, "sift.exit_layer"),
    ({"exit_layer": 1.5}, "sift.exit_layer"),
    ({"exit_layer": True}, "sift.exit_layer"),
    ({"exit_layer": 4}, "sift.exit_layer=4 exceeds the model's depth"),
    ({"keep_ratio": 0}, "sift.keep_ratio"),
    ({"keep_ratio": 1.5}, "sift.keep_ratio"),
    ({"keep_ratio": "half"}, "sift.keep_ratio"),
    ({"keep_ratio": 0.3}, "sift.keep_ratio=0.3 with train_micro_batch_size_per_gpu=4"),
    ({"warmup_steps": -1}, "sift.selection_start_step must be >= 0"),  # the old name of the key
    ({"selection_start_step": 2.0}, "sift.selection_start_step must be of type int or \"auto\""),
    ({"selection_start_step": "soon"}, "sift.selection_start_step must be of type int or \"auto\""),
    ({"selection_start_share": 1.5}, "sift.selection_start_share must be in [0, 1]"),
    ({"start_after_lr_peak": 1}, "sift.start_after_lr_peak"),
    ({"scope": "node"}, "sift.scope"),
    ({"kernel": "cuda"}, "sift.kernel"),
    ({"seed": "x"}, "sift.seed"),
    ({"topk": 3}, "ds_config 'sift' section: unknown key 'topk'"),
    ({"keep_ration": 0.5}, "ds_config 'sift' section: unknown key 'keep_ration'; did you mean 'keep_ratio'?"),
]


@pytest.mark.parametrize("section,message", BAD, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_value_names_the_key(section, message):
    cfg = ds_config(micro=4)
    cfg["sift"] = section
    with pytest.raises(ValueError) as err:
        sift_ds.initialize(model=tiny_bert(layers=3), config=cfg)
    assert message in str(err.value)


def test_sift_section_must_be_an_object():
    cfg = ds_config()
    cfg["sift"] = [1]
    with pytest.raises(ValueError, match="'sift' must be a JSON object"):
        sift_ds.initialize(model=tiny_bert(), config=cfg)


def test_gross_batch_from_train_batch_size(monkeypatch):
    import torch.distributed as dist

    # The world size comes from the process group when one exists (other tests may have made one).
    world = dist.get_world_size() if dist.is_initialized() else 2
    monkeypatch.setenv("WORLD_SIZE", str(world))
    cfg = {"train_batch_size": 3 * 2 * world, "gradient_accumulation_steps": 2,
           "sift": {"keep_ratio": 0.4, "selection_start_step": 0, "start_after_lr_peak": True}}
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=3 gives a gross batch of 7.5"):
        sift_ds.initialize(model=tiny_bert(), config=cfg)


def test_config_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match="nope.json"):
        sift_ds.initialize(model=tiny_bert(), config=str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        sift_ds.initialize(model=tiny_bert(), config=str(bad))
    good = tmp_path / "cfg.json"
    good.write_text(json.dumps({**ds_config(), "sift": {"scope": "everywhere"}}))
    with pytest.raises(ValueError, match="sift.scope"):
        sift_ds.initialize(model=tiny_bert(), config=str(good))


def test_model_without_adapter_is_explained():
    import torch

    with pytest.raises(TypeError, match="pass adapter="):
        sift_ds.initialize(model=torch.nn.Linear(2, 2), config=ds_config())


def test_triton_kernel_without_cuda_or_interpreter_fails_at_startup(single_rank_dist, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("Triton runs natively here")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="sift.kernel='triton' cannot run here"):
        sift_ds.initialize(model=tiny_bert(), config=ds_config(kernel="triton"))


def test_notes_are_ignored_in_every_section(tmp_path):
    """Keys starting with "_" are notes: at the top level (DeepSpeed's part), in "sift" and in "pretrain";
    a typo in "pretrain" gets the closest key, as in "sift"."""
    from launch_helpers import config_file, load_cli, set_key

    assert sift_ds.SiftConfig.from_dict({"_comment": "why", "keep_ratio": 0.25}).keep_ratio == 0.25
    cli = load_cli()

    def notes(config):
        config["_comment"] = "top"
        for section in (config["sift"], config["pretrain"], config["zero_optimization"], config["optimizer"]["params"]):
            section["_why"] = "a note"  # DeepSpeed's own sections refuse keys they do not know

    plan = cli.resolve(["--ds_config", config_file(tmp_path, notes), "--output_dir", str(tmp_path / "o")])
    assert "\"_why\"" not in json.dumps(plan.ds_config) and plan.options.model == "tiny"
    with pytest.raises(ValueError, match="'pretrain' section: unknown key 'max_step'; did you mean 'max_steps'"):
        from sift_ds.pretrain.options import read_pretrain_section
        read_pretrain_section(config_file(tmp_path, set_key(("pretrain", "max_step"), 3)))
