"""Run in a subprocess by tests/test_megatron_units.py where Megatron-LM (``megatron.training``) is
installed: an example script's ``main()`` against the real Megatron-LM, up to the call of its
``pretrain`` (which needs CUDA). The stand-in given as ``pretrain`` carries the real function's
signature (``functools.wraps``), binds the call to it, and records what it got; on the core_v0.18+
path Megatron's own ``parse_and_validate_args`` has parsed the command line (with the --sift-* flags)
and ``pretrain_cfg_container_from_args`` has built the container (before, Megatron's parser and
``validate_args`` run here, as ``pretrain`` would). Then the script's ``model_provider`` builds its
model on the CPU (one gloo rank, ``--use-cpu-initialization``), ``Sift`` finds its adapter, and the
wrapped datasets provider builds the (``--mock-data``) training set of gross items, and the early exit
scores one of them (the test harness's CUDA-only spots patched, as in megatron_common.py).
Prints one JSON line.

    python megatron_entry.py <example script> <Megatron-LM arguments ...>
"""
import functools
import importlib.util
import inspect
import json
import sys

import os

import megatron.training as megatron_training
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.training import arguments as megatron_arguments
from megatron.training import global_vars

from sift_ds import SiftConfig
from sift_ds.megatron import Sift

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import megatron_common  # noqa: E402

script, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
spec = importlib.util.spec_from_file_location("example", script)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)
real = megatron_training.pretrain
seen = {}


@functools.wraps(real)
def pretrain(*args, **kwargs):
    seen.update(inspect.signature(real).bind(*args, **kwargs).arguments)


example.main(pretrain=pretrain)
container = "cfg_container" in seen
if container:  # parsed before pretrain, by Megatron's parse_and_validate_args; the global args are set
    config = SiftConfig.from_megatron_args(megatron_training.get_args())
else:  # pretrain would parse: Megatron's own parser with the extra_args_provider it was given
    args = megatron_arguments.parse_args(seen["extra_args_provider"])
    megatron_arguments.validate_args(args, seen["args_defaults"])
    global_vars.set_global_variables(args)
    config = SiftConfig.from_megatron_args(args)
provider, step = seen["train_valid_test_dataset_provider"], seen["forward_step_func"]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29531"))
dist.init_process_group("gloo", rank=0, world_size=1)
parallel_state.initialize_model_parallel()
model = example.model_provider()
train, _, _ = provider([6, 0, 0])
item = train[0]
megatron_common.patch_cuda_spots()
torch.cuda.current_device = lambda: "cpu"  # RoPE moves its frequencies there
scores = Sift(config).scores(model, {k: torch.as_tensor(v) for k, v in item.items()})
print(json.dumps({
    "container": container,
    "container_type": type(seen.get("cfg_container")).__name__,
    "provider_wrapped": getattr(provider, "__wrapped_provider__", None) is example.train_valid_test_datasets_provider,
    "is_distributed": getattr(provider, "is_distributed", False),
    "forward_step_wrapped": step is not example.forward_step and step.__wrapped__ is example.forward_step,
    "model_provider": seen.get("model_provider") is example.model_provider,
    "model_type": str(seen["model_type"]),
    "keep_ratio": config.keep_ratio, "exit_layer": config.exit_layer, "criterion": config.criterion,
    "tokenizer_default": (seen.get("args_defaults") or {}).get("tokenizer_type"),
    "train_items": len(train), "item": {k: list(v.shape) for k, v in item.items() if getattr(v, "ndim", 0) > 1},
    "model": type(model).__name__, "adapter": type(Sift(config).adapter(model)).__name__,
    "scores": [float(x) for x in scores],
}))
