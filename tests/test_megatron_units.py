"""sift_ds.megatron in one process: the --sift-* flags and SiftConfig.from_megatron_args, the gross
dataset (length, stacking, the provider's sample count, resume position under Megatron's sampler),
the loss-dict telemetry, the iteration / micro-step source, import isolation. The model-level checks
(TP scores, selection, training) run on 2 and 4 ranks in test_megatron_dist.py; Megatron-LM's entry
points and the example scripts are in test_megatron_entry.py."""
import argparse
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch


pytest.importorskip("megatron.core", reason="needs the megatron-core test extra")

from megatron.core import num_microbatches_calculator as nmc  # noqa: E402

from sift_ds import SiftConfig  # noqa: E402
from sift_ds.config import key_fields  # noqa: E402
from sift_ds.megatron import GrossDataset, Sift, add_arguments  # noqa: E402
from sift_ds.megatron.datasets import unstack_rows  # noqa: E402
from sift_ds.megatron.forward_step import current_iteration, loss_dict_stats, wrap_loss_func  # noqa: E402
from sift_ds.telemetry import selection_stats  # noqa: E402
from sift_ds.megatron.sift import gross_factor  # noqa: E402

def test_import_sift_ds_does_not_import_megatron():
    code = "import sys, sift_ds; print(sorted(m for m in sys.modules if m.split('.')[0] == 'megatron'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------- command line
def parse(argv):
    return add_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_every_config_field_has_a_flag_and_defaults_hold():
    parser = add_arguments(argparse.ArgumentParser())
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for name, _ in key_fields():  # SiftConfig's fields and every criterion's keys
        assert "--sift-" + name.replace("_", "-") in flags, name
    assert SiftConfig.from_megatron_args(parse([])) == SiftConfig()
    assert SiftConfig.from_megatron_args(argparse.Namespace()) == SiftConfig()  # flags not added at all


def test_flags_map_onto_the_config():
    args = parse(["--sift-criterion", "entropy", "--sift-exit-layer", "2", "--sift-keep-ratio", "0.25",
                  "--sift-warmup-steps", "20000", "--sift-scope", "local", "--sift-kernel", "torch",
                  "--sift-enabled", "false", "--sift-random-fraction", "0.1"])
    cfg = SiftConfig.from_megatron_args(args)
    assert cfg == SiftConfig(criterion="entropy", exit_layer=2, keep_ratio=0.25, warmup_steps=20000, scope="local",
                             kernel="torch", enabled=False, random_fraction=0.1)


def test_bad_flags_are_refused():
    with pytest.raises(SystemExit):
        parse(["--sift-scope", "everywhere"])  # argparse: not a choice
    with pytest.raises(ValueError, match="keep_ratio"):
        SiftConfig.from_megatron_args(parse(["--sift-keep-ratio", "1.5"]))
    with pytest.raises(ValueError, match="whole number"):
        gross_factor(SiftConfig(keep_ratio=0.4))
    assert gross_factor(SiftConfig(keep_ratio=0.25)) == 4 and gross_factor(SiftConfig(enabled=False)) == 1


# ---------------------------------------------------------------- the gross dataset
def base_samples(n, seq=6):
    return [{"id": np.int64(i), "text": np.full(seq, i, np.int64), "loss_mask": np.ones(seq, np.int64)}
            for i in range(n)]


def megatron_sampler(total, consumed, micro, dp_rank, dp_size):
    """Megatron-LM's MegatronPretrainingSampler: global batches from ``consumed`` on, this rank's slice."""
    batch = []
    for idx in range(consumed, total):
        batch.append(idx)
        if len(batch) == micro * dp_size:
            yield batch[dp_rank * micro:(dp_rank + 1) * micro]
            batch = []


def test_provider_asks_for_factor_times_the_training_samples():
    calls = []

    def provider(num_samples, vp_stage=None):
        calls.append((list(num_samples), vp_stage))
        return base_samples(num_samples[0]), ["valid"], ["test"]

    provider.is_distributed = True
    wrapped = Sift(SiftConfig(keep_ratio=0.25, selection_start_step=0)).datasets_provider(provider)
    assert wrapped.is_distributed is True
    train, valid, test = wrapped([40, 6, 3], vp_stage=1)
    assert calls == [([160, 6, 3], 1)]  # only the training count grows; vp_stage forwarded
    assert isinstance(train, GrossDataset) and len(train) == 40 and valid == ["valid"] and test == ["test"]
    item = train[3]
    assert item["text"].shape == (4, 6) and item["id"].tolist() == [12, 13, 14, 15]

    def old_provider(num_samples):  # no vp_stage parameter, no is_distributed attribute
        return base_samples(num_samples[0]), None, None

    lazy = Sift(lambda: SiftConfig(keep_ratio=0.25, selection_start_step=0))  # config read at the first use (Megatron parses args late)
    assert len(lazy.datasets_provider(old_provider)([10, 0, 0])[0]) == 10 and lazy.factor == 4
    wrapped = Sift(SiftConfig(keep_ratio=0.5, selection_start_step=0)).datasets_provider(old_provider)
    assert not hasattr(wrapped, "is_distributed") and len(wrapped((10, 0, 0))[0]) == 10
    assert wrapped((10, 0, 0), vp_stage=None)[1] is None
    with pytest.raises(IndexError):
        GrossDataset(base_samples(9), 2)[4]  # 9 samples -> 4 whole items


def test_gross_batches_and_resume_position():
    """Micro-batch 2, DP 2, factor 2: item i is base samples 2i, 2i+1; a run resumed after 3
    iterations (consumed_train_samples = 3 * global batch 4) reads what the uninterrupted run read."""
    ds = GrossDataset(base_samples(64), 2)
    micro, dp = 2, 2
    collate = torch.utils.data.default_collate

    def rows(consumed, dp_rank):
        out = []
        for idx in megatron_sampler(len(ds), consumed, micro, dp_rank, dp):
            batch = unstack_rows(collate([ds[i] for i in idx]), 2)
            assert batch["text"].shape == (micro * 2, 6)
            out.append(batch["id"].tolist())
        return out

    for dp_rank in range(dp):
        full = rows(0, dp_rank)
        assert len(full) == len(ds) // (micro * dp) == 8
        assert rows(3 * micro * dp, dp_rank) == full[3:]
        first = 4 * 3 + dp_rank * micro  # iteration 3, this rank's first item
        assert full[3] == [2 * first, 2 * first + 1, 2 * first + 2, 2 * first + 3]
    with pytest.raises(ValueError, match="wrapped"):
        unstack_rows({"text": torch.zeros(2, 6)}, 2)  # a batch that did not come from the gross dataset


# ---------------------------------------------------------------- telemetry and the loss dict
def test_loss_dict_carries_telemetry_pairs():
    scores = torch.tensor([1.0, 5.0, float("-inf"), 3.0])
    kept = torch.tensor([False, True, False, True])
    stats = loss_dict_stats(selection_stats(scores, kept, True, 0.5), True)
    assert stats["sift/score_kept_mean"].tolist() == [8.0, 2.0]
    assert stats["sift/score_dropped_mean"].tolist() == [1.0, 1.0]
    assert stats["sift/kept_fraction"].tolist() == [2.0, 4.0]
    assert stats["sift/nonfinite_scores"].tolist() == [1.0, 1.0] and stats["sift/warmup"].tolist() == [0.0, 1.0]
    warm = loss_dict_stats(selection_stats(torch.full((4,), float("nan")), kept, False, 0.5), False)
    assert "sift/score_kept_mean" not in warm and warm["sift/warmup"].tolist() == [1.0, 1.0]

    two = wrap_loss_func(lambda out: (out * 2, {"lm loss": out.view(1)}), stats)
    loss, d = two(torch.tensor(1.5))
    assert loss.item() == 3.0 and d["lm loss"].item() == 1.5 and d["sift/kept_fraction"].tolist() == [2.0, 4.0]
    three = wrap_loss_func(lambda out: (out, torch.tensor(7), {"lm loss": torch.stack([out, out])}), stats)
    assert len(three(torch.tensor(1.0))) == 3 and "sift/warmup" in three(torch.tensor(1.0))[2]
    raw = wrap_loss_func(lambda out, non_loss_data=False: ("data",) if non_loss_data else (out, {}), stats)
    assert raw(torch.tensor(1.0), non_loss_data=True) == ("data",)
    means = wrap_loss_func(lambda out: (out, {}), stats, pairs=False)(torch.tensor(1.0))[1]
    assert means["sift/kept_fraction"].tolist() == [0.5] and means["sift/score_kept_mean"].tolist() == [4.0]


# ---------------------------------------------------------------- iteration and micro-steps
def test_iteration_source(monkeypatch):
    args = types.SimpleNamespace(curr_iteration=17, iteration=3)
    fake = types.ModuleType("megatron.training")
    fake.get_args = lambda: args
    monkeypatch.setitem(sys.modules, "megatron.training", fake)
    assert current_iteration(torch.nn.Linear(1, 1)) == 17
    args.curr_iteration = None
    assert current_iteration(torch.nn.Linear(1, 1)) == 3
    engine = types.SimpleNamespace(global_steps=42)  # a DeepSpeed engine (Megatron-DeepSpeed)
    assert current_iteration(engine) == 42


def test_micro_steps_repeat_when_megatron_replays_an_iteration():
    nmc.init_num_microbatches_calculator(0, None, 8, 4, 1, False)  # 2 micro-batches per iteration
    try:
        step = {"i": 5}
        sift = Sift(SiftConfig(), iteration=lambda: step["i"])
        model = torch.nn.Linear(1, 1)
        seen = [sift.position(model) for _ in range(4)]  # iteration 5, then its rerun
        step["i"] = 6
        seen.append(sift.position(model))
        assert seen == [(5, 0), (5, 1), (5, 0), (5, 1), (6, 0)]
    finally:
        nmc.destroy_num_microbatches_calculator()


def test_adapter_is_found_from_the_model_class():
    """BertModel / GPTModel get their adapters in the dist tests; another model is refused, naming both."""
    with pytest.raises(TypeError, match="no built-in early-exit adapter for Linear .model_type None; built in: bert, .*, BertModel, GPTModel"):
        Sift(SiftConfig()).adapter(torch.nn.Linear(1, 1))
