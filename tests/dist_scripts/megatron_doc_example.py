"""Run in a subprocess by tests/test_megatron_doc.py: docs/megatron.md's example script, as written,
on the CPU, up to Megatron-LM's training loop (which needs CUDA).

Megatron-LM (``megatron.training``) is not a pip dependency; the three of its functions the example
imports are stand-ins here: ``pretrain`` with the parameter list of core_v0.17's, which parses the
command line as the real one does (Megatron's flags the example reads, plus the extra_args_provider
it is given) and records its call; ``get_args``; ``core_transformer_config_from_args`` (a small
``TransformerConfig``, dropout off). Then, on one gloo rank, the recorded ``model_provider`` builds
the model, the recorded datasets provider builds the data, and the recorded ``forward_step`` runs one
training micro-step (after SIFT's warm-up) and one evaluation step. Prints one JSON line.
"""
import argparse
import json
import os
import re
import sys
import types

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.transformer.transformer_config import TransformerConfig
from torch.utils.data import default_collate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import megatron_common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGV = ["--vocab-size", "128", "--seq-length", "32", "--max-position-embeddings", "32", "--seed", "7",
        "--sift-keep-ratio", "0.5", "--sift-warmup-steps", "2", "--sift-exit-layer", "1"]
ARGS = argparse.Namespace()
CALLS = []


def pretrain(train_valid_test_dataset_provider, model_provider, model_type, forward_step_func,
             process_non_loss_data_func=None, extra_args_provider=None, args_defaults={},
             get_embedding_ranks=None, get_position_embedding_ranks=None, non_loss_data_func=None,
             store=None, inprocess_call_wrapper=None):
    parser = argparse.ArgumentParser()
    for flag in ("--vocab-size", "--seq-length", "--max-position-embeddings", "--seed"):
        parser.add_argument(flag, type=int)
    args = extra_args_provider(parser).parse_args(ARGV)
    vars(ARGS).update(vars(args), padded_vocab_size=args.vocab_size, curr_iteration=0, **args_defaults)
    CALLS.append(dict(locals()))


def core_transformer_config_from_args(args):
    return TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, use_cpu_initialization=True,
                             hidden_dropout=0.0, attention_dropout=0.0, params_dtype=torch.float32)


training = types.ModuleType("megatron.training")
training.pretrain, training.get_args = pretrain, lambda: ARGS
arguments = types.ModuleType("megatron.training.arguments")
arguments.core_transformer_config_from_args = core_transformer_config_from_args
sys.modules.update({"megatron.training": training, "megatron.training.arguments": arguments})

text = open(os.path.join(REPO, "docs", "megatron.md"), encoding="utf-8").read()
(block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def forward_step" in b]
scope = {"__name__": "__main__"}
exec(block, scope)  # noqa: S102 - the documented example, as written
(call,) = CALLS

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
dist.init_process_group("gloo", rank=0, world_size=1)
parallel_state.initialize_model_parallel()
megatron_common.patch_cuda_spots()
torch.manual_seed(0)
model = call["model_provider"]()
train, valid, test = call["train_valid_test_dataset_provider"]([8, 4, 0])
gross = default_collate([train[0], train[1]])  # one micro-batch of 2 gross items: 4 rows
step = call["forward_step_func"]

ARGS.curr_iteration = 5  # after the SIFT warm-up: the rows are chosen by score
model.train()
output, loss_func = step(iter([gross]), model)
loss, report = loss_func(output)
loss.backward()
sift = scope["sift"]
sel = sift.last

rows = {k: v.reshape(4, *v.shape[2:]) for k, v in gross.items()}
kept = sel.indices.sort().values
model.eval()
with torch.no_grad():  # the reference: the dense model's own masked-LM loss on the kept rows
    ref_tokens, _ = model(rows["text"][kept], rows["padding_mask"][kept], lm_labels=rows["labels"][kept])
    mask = rows["loss_mask"][kept].float()
    ref = float((ref_tokens.float() * mask).sum() / mask.sum())
    eval_out, eval_loss_func = step(iter([default_collate([valid[0], valid[1]])]), model)
    eval_loss, eval_report = eval_loss_func(eval_out)
    # the reference scores: mean prediction entropy over each row's masked positions, from layer 1's output
    # (caught by a hook in the model's own forward) through its final norm, MLM head and tied output weight
    caught = {}
    hook = model.encoder.layers[0].register_forward_hook(lambda m, i, o: caught.__setitem__("h", o[0]))
    model(rows["text"], rows["padding_mask"])
    hook.remove()
    head = model.lm_head(model.encoder.final_layernorm(caught["h"])).transpose(0, 1).double()
    weight, bias = model.shared_embedding_or_output_weight().double(), model.output_layer.bias.double()
    logp = torch.log_softmax(head @ weight.T + bias, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    mask = rows["loss_mask"].double()
    reference_scores = ((entropy * mask).sum(1) / mask.sum(1)).tolist()

print(json.dumps({
    "provider_wrapped": call["train_valid_test_dataset_provider"].__wrapped_provider__ is
    scope["train_valid_test_datasets_provider"],
    "is_distributed": getattr(call["train_valid_test_dataset_provider"], "is_distributed", False),
    "forward_step_wrapped": step.__wrapped__ is scope["forward_step"],
    "model_type": str(call["model_type"]), "tokenizer_type": ARGS.tokenizer_type,
    "config": [sift.config.criterion, sift.config.exit_layer, sift.config.keep_ratio, sift.config.selection_start_step],
    "model": type(model).__name__, "lengths": [len(train), len(valid)],
    "gross_shape": list(gross["text"].shape), "by_score": bool(sel.by_score),
    "scores": [float(x) for x in sel.scores], "kept": kept.tolist(),
    "reference_scores": reference_scores, "loss": loss.item(), "reference_loss": ref, "report": sorted(report),
    "grads_finite": all(torch.isfinite(p.grad).all().item() for p in model.parameters() if p.grad is not None),
    "grads": sum(p.grad is not None for p in model.parameters()),
    "eval_loss": eval_loss.item(), "eval_report": sorted(eval_report),
}))
