"""Megatron-LM's two entry points and the example scripts.

``run_pretrain`` against stand-ins with the exact signatures of Megatron-LM's ``pretrain`` up to
core_v0.17, at core_v0.18 and from core_v0.19 on (Megatron-LM is not a pip dependency); where
Megatron-LM itself is importable, each example script's ``main()`` against the real
``megatron.training`` up to its CUDA-only ``pretrain`` (tests/dist_scripts/megatron_entry.py:
Megatron's parser and config container, the script's model and dataset, an early-exit score); and,
with CUDA, a few training iterations of each example."""
import argparse
import ast
import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

from launcher import REPO, clean_env, free_port, requires_cuda

pytest.importorskip("megatron.core", reason="needs the megatron-core test extra")

from sift_ds import SiftConfig  # noqa: E402
from sift_ds.megatron import Sift, run_pretrain  # noqa: E402
from sift_ds.megatron.entry import takes_config_container  # noqa: E402

EXAMPLES = {name: os.path.join(REPO, "launch", f"pretrain_{name}_megatron.py") for name in ("bert", "gpt")}
CALLS = []


# The parameter lists of Megatron-LM's pretrain (megatron/training/training.py at each tag).
def pretrain_core_v0_17(train_valid_test_dataset_provider, model_provider, model_type, forward_step_func,
                        process_non_loss_data_func=None, extra_args_provider=None, args_defaults={},
                        get_embedding_ranks=None, get_position_embedding_ranks=None, non_loss_data_func=None,
                        store=None, inprocess_call_wrapper=None):
    CALLS.append(dict(locals()))


def pretrain_core_v0_18(cfg_container, train_valid_test_dataset_provider, model_provider, model_type,
                        forward_step_func, process_non_loss_data_func=None, get_embedding_ranks=None,
                        get_position_embedding_ranks=None, non_loss_data_func=None, store=None,
                        inprocess_call_wrapper=None):
    CALLS.append(dict(locals()))


def pretrain_core_v0_19(cfg_container, train_valid_test_dataset_provider, model_type, forward_step_func,
                        model_provider=None, process_non_loss_data_func=None, get_embedding_ranks=None,
                        get_position_embedding_ranks=None, non_loss_data_func=None, store=None,
                        inprocess_call_wrapper=None, p2p_communicator=None, pg_collection=None,
                        skip_model_parallel_init=False):
    CALLS.append(dict(locals()))


@pytest.fixture
def megatron_lm_parsing(monkeypatch):
    """Megatron-LM's core_v0.18+ parsing functions as stand-ins: parse_and_validate_args parses
    ``--lr`` plus the extra_args_provider's flags; the container records what it was built from."""
    parsed = {}

    def parse_and_validate_args(extra_args_provider=None, ignore_unknown_args=False, args_defaults={}):
        parser = argparse.ArgumentParser()
        parser.add_argument("--lr", type=float)
        parsed.update(args_defaults=args_defaults, args=extra_args_provider(parser).parse_args(
            ["--lr", "0.1", "--sift-keep-ratio", "0.25", "--sift-exit-layer", "2"]))
        return parsed["args"]

    arguments = types.ModuleType("megatron.training.arguments")
    arguments.parse_and_validate_args = parse_and_validate_args
    utils = types.ModuleType("megatron.training.argument_utils")
    utils.pretrain_cfg_container_from_args = lambda args, model_cfg=None: ("container", args, model_cfg)
    monkeypatch.setitem(sys.modules, "megatron.training", types.ModuleType("megatron.training"))
    monkeypatch.setitem(sys.modules, "megatron.training.arguments", arguments)
    monkeypatch.setitem(sys.modules, "megatron.training.argument_utils", utils)
    CALLS.clear()
    return parsed


def provider(num_samples, vp_stage=None):
    return None, None, None


def model_provider(pre_process=True, post_process=True, vp_stage=None, config=None, pg_collection=None):
    return None


def forward_step(data_iterator, model):
    return None


def check_wrapped(call):
    assert call["train_valid_test_dataset_provider"].__wrapped_provider__ is provider
    assert call["forward_step_func"].__wrapped__ is forward_step and call["forward_step_func"] is not forward_step
    assert call["model_type"] == "encoder_or_decoder" and call["store"] == "store"


def test_run_pretrain_before_core_v0_18(megatron_lm_parsing):
    assert not takes_config_container(pretrain_core_v0_17)
    run_pretrain(Sift(SiftConfig()), provider, model_provider, "encoder_or_decoder", forward_step, store="store",
                 args_defaults={"tokenizer_type": "GPT2BPETokenizer"}, pretrain=pretrain_core_v0_17)
    (call,) = CALLS
    check_wrapped(call)
    assert call["model_provider"] is model_provider and call["args_defaults"] == {"tokenizer_type": "GPT2BPETokenizer"}
    args = call["extra_args_provider"](argparse.ArgumentParser()).parse_args(["--sift-keep-ratio", "0.25"])
    assert SiftConfig.from_megatron_args(args).keep_ratio == 0.25
    with pytest.raises(ValueError, match="model_provider"):
        run_pretrain(Sift(SiftConfig()), provider, None, "encoder_or_decoder", forward_step,
                     pretrain=pretrain_core_v0_17)


@pytest.mark.parametrize("pretrain", [pretrain_core_v0_18, pretrain_core_v0_19])
def test_run_pretrain_with_a_config_container(megatron_lm_parsing, pretrain):
    """Parsed first (with the --sift-* flags and the script's own), the container passed first, every
    other argument by name (core_v0.19 moved model_provider behind forward_step_func)."""
    assert takes_config_container(pretrain)

    def own_flags(parser):
        parser.add_argument("--own-flag", default="x")
        return parser

    run_pretrain(Sift(SiftConfig()), provider, model_provider, "encoder_or_decoder", forward_step, store="store",
                 extra_args_provider=own_flags, args_defaults={"tokenizer_type": "GPT2BPETokenizer"},
                 model_config=lambda args: ("model config", args.lr), pretrain=pretrain)
    (call,) = CALLS
    check_wrapped(call)
    args = megatron_lm_parsing["args"]
    assert call["cfg_container"] == ("container", args, ("model config", 0.1))
    assert call["model_provider"] is model_provider and args.own_flag == "x"
    assert megatron_lm_parsing["args_defaults"] == {"tokenizer_type": "GPT2BPETokenizer"}
    config = SiftConfig.from_megatron_args(args)
    assert (config.keep_ratio, config.exit_layer) == (0.25, 2)
    if pretrain is pretrain_core_v0_19:  # the model from the container's model config: no provider needed
        run_pretrain(Sift(SiftConfig()), provider, None, "encoder_or_decoder", forward_step, pretrain=pretrain)
        assert CALLS[-1]["model_provider"] is None and CALLS[-1]["cfg_container"][2] is None


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_script_runs_its_functions_through_run_pretrain(name):
    tree = ast.parse(open(EXAMPLES[name], encoding="utf-8").read())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"model_provider", "forward_step", "train_valid_test_datasets_provider", "main"} <= defined
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "run_pretrain"]
    assert len(calls) == 1
    assert [ast.unparse(a) for a in calls[0].args] == ["sift", "train_valid_test_datasets_provider", "model_provider",
                                                        "ModelType.encoder_or_decoder", "forward_step"]
    assert {k.arg for k in calls[0].keywords} == {"args_defaults", "pretrain"}


TINY = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
        "--max-position-embeddings", "64", "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-4",
        "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1024", "--transformer-impl", "local",
        "--position-embedding-type", "rope", "--sift-exit-layer", "1"]


@pytest.mark.skipif(importlib.util.find_spec("megatron.training") is None,
                    reason="needs Megatron-LM (megatron.training) on the path")
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_script_against_megatron_lm(name):
    cpu = ["--train-iters", "4", "--use-cpu-initialization", "--no-persist-layer-norm",
           "--no-gradient-accumulation-fusion", "--no-rope-fusion", "--sift-keep-ratio", "0.25",
           "--sift-criterion", "entropy"]
    cmd = [sys.executable, os.path.join(REPO, "tests", "dist_scripts", "megatron_entry.py"), EXAMPLES[name],
           *TINY, *cpu]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(MASTER_PORT=str(free_port())), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["provider_wrapped"] and r["is_distributed"] and r["forward_step_wrapped"] and r["model_provider"]
    assert (r["keep_ratio"], r["exit_layer"], r["criterion"]) == (0.25, 1, "entropy")
    model, adapter, key = {"bert": ("BertModel", "MCoreBertAdapter", "text"),
                           "gpt": ("GPTModel", "MCoreGPTAdapter", "tokens")}[name]
    assert (r["model"], r["adapter"]) == (model, adapter)
    assert r["item"][key] == [4, 64] and r["train_items"] >= 6  # one item: 1 / keep_ratio samples
    assert len(r["scores"]) == 4 and all(0.0 < s < 10.0 for s in r["scores"])  # entropy <= ln(1024)


@requires_cuda
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_script_smoke_gpu(tmp_path, name):  # pragma: no cover - needs CUDA and Megatron-LM
    pytest.importorskip("megatron.training", reason="needs Megatron-LM (megatron.training) on the path")
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "1", EXAMPLES[name], *TINY,
           "--train-iters", "6", "--eval-iters", "1", "--eval-interval", "3", "--sift-keep-ratio", "0.5",
           "--sift-warmup-steps", "2", "--log-interval", "1", "--save", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "sift/kept_fraction" in proc.stdout + proc.stderr
