"""docs/megatron.md's example script runs as written, on the CPU, up to Megatron-LM's training loop
(which needs CUDA): tests/dist_scripts/megatron_doc_example.py executes its Python block with
stand-ins for the three Megatron-LM functions it imports, then calls the functions that
``run_pretrain`` handed to ``pretrain`` on a small megatron-core ``BertModel`` (one gloo rank). The
references are independent of sift_ds: the entropy at exit layer 1 in float64 from the model's own
forward, and the dense model's own masked-LM loss on the kept rows."""
import ast
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from launcher import REPO, clean_env, free_port

pytest.importorskip("megatron.core", reason="needs the megatron-core test extra")


def test_megatron_doc_example_runs():
    cmd = [sys.executable, os.path.join(REPO, "tests", "dist_scripts", "megatron_doc_example.py")]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(MASTER_PORT=str(free_port())), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # run_pretrain wrapped the script's two functions and passed Megatron the --sift-* flags
    assert r["provider_wrapped"] and r["is_distributed"] and r["forward_step_wrapped"]
    assert r["model_type"] == "ModelType.encoder_or_decoder" and r["tokenizer_type"] == "NullTokenizer"
    assert r["config"] == ["entropy", 1, 0.5, 2] and r["model"] == "BertModel"
    # the training set in items of 1 / keep_ratio = 2 samples; the validation set as the script made it
    assert r["lengths"] == [8, 4]  # asked for 8 training samples: 16 made, 8 items
    assert r["gross_shape"] == [2, 2, 32]
    # the scores are the float64 entropy at exit 1, and the kept rows the top half of them
    assert r["by_score"]
    assert max(abs(a - b) for a, b in zip(r["scores"], r["reference_scores"])) < 1e-5
    top = sorted(range(4), key=lambda i: -r["reference_scores"][i])[:2]
    assert r["kept"] == sorted(top)
    # the script's forward_step and loss_func ran on those rows: the dense model's loss, with gradients
    assert r["loss"] == pytest.approx(r["reference_loss"], abs=1e-5)
    assert r["grads"] > 0 and r["grads_finite"]
    assert {"lm loss", "sift/kept_fraction", "sift/score_kept_mean", "sift/warmup"} <= set(r["report"])
    # evaluation passes through SIFT untouched
    assert r["eval_report"] == ["lm loss"] and 0 < r["eval_loss"] < 10


def _sides(diff: str):
    """The code before and after a unified diff block (its context lines in both)."""
    before = [line[1:] for line in diff.splitlines() if line[:1] in (" ", "-")]
    after = [line[1:] for line in diff.splitlines() if line[:1] in (" ", "+")]
    return "\n".join(before), "\n".join(after)


def _pretrain_call(code: str) -> dict:
    """The arguments of the one ``pretrain(...)`` call in ``code``: position or keyword -> source."""
    (call,) = [n for n in ast.walk(ast.parse(textwrap.dedent(code.split('if __name__ == "__main__":')[1])))
               if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "pretrain"]
    return {**{i: ast.unparse(a) for i, a in enumerate(call.args)},
            **{k.arg: ast.unparse(k.value) for k in call.keywords}}


def test_the_headline_diff_changes_what_the_doc_says_and_its_flags_configure_the_selection():
    """The adoption diff (core_v0.17): the prose's count of changed ``pretrain`` arguments is the diff's,
    and the script after it, run with a stand-in ``pretrain`` that parses a command line as Megatron's
    does, configures the selection from the ``--sift-*`` flags that it adds (nothing hard-coded)."""
    import argparse
    import types

    text = open(os.path.join(REPO, "docs", "megatron.md"), encoding="utf-8").read()
    before, after = _sides(re.findall(r"```diff\n(.*?)```", text, re.S)[0])
    old, new = _pretrain_call(before), _pretrain_call(after)
    changed = sorted(str(k) for k in set(old) | set(new) if old.get(k) != new.get(k))
    assert changed == ["0", "3", "extra_args_provider"], changed
    assert "Adopting it changes three\narguments of `pretrain`" in text
    parsed = argparse.Namespace()

    def pretrain(datasets_provider, model_provider, model_type, forward_step, extra_args_provider=None,
                 args_defaults=None):
        argv = ["--sift-criterion", "loss", "--sift-exit-layer", "2", "--sift-keep-ratio", "0.25"]
        vars(parsed).update(vars(extra_args_provider(argparse.ArgumentParser()).parse_args(argv)))

    def provider(num_samples):
        return None

    scope = {"__name__": "__main__", "pretrain": pretrain, "get_args": lambda: parsed, "forward_step": lambda *a: None,
             "train_valid_test_datasets_provider": provider, "model_provider": None,
             "ModelType": types.SimpleNamespace(encoder_or_decoder="encoder_or_decoder")}
    exec(compile(after, "docs/megatron.md (after the diff)", "exec"), scope)
    config = scope["sift"].config
    assert (config.criterion, config.exit_layer, config.keep_ratio) == ("loss", 2, 0.25)
