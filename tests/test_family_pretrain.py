"""launch/pretrain_bert.py trains the tiny preset of every supported family for a few SIFT steps
(one process, one rank, a small corpus): finite losses, selection after the warm-up, an MFU figure,
and an exported model of the right family that loads with ``AutoModelForMaskedLM``."""
import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from launch_helpers import REPO, SCRIPT, cpu_env, metrics, small_config
from sift_ds.pretrain.models import family_presets

FAMILY_PRESETS = family_presets()

STEPS = 3
DRIVER = """
import runpy, sys
cli = runpy.run_path(sys.argv[1])
for model, out in zip(sys.argv[3::2], sys.argv[4::2]):
    cli["main"](["--ds_config", sys.argv[2], "--model", model, "--output_dir", out])
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every family preset, one after the other in one process (the imports are paid once)."""
    tmp = tmp_path_factory.mktemp("families")
    corpus = tmp / "corpus.txt"
    words = "the of and a to in is was for on data model layer token vocabulary".split()
    corpus.write_text("\n".join(" ".join(words[(i * 7 + j * j) % len(words)] for j in range(40)) for i in range(200)))
    config = small_config(tmp, data=str(corpus), seq_len=32, vocab_size=100, max_steps=STEPS, eval_interval=STEPS)
    with open(config) as f:
        spec = json.load(f)
    spec["sift"]["selection_start_step"] = 1
    spec["train_micro_batch_size_per_gpu"] = 4
    with open(config, "w") as f:
        json.dump(spec, f)
    outs = {name: tmp / name for name in FAMILY_PRESETS}
    argv = [arg for name, out in outs.items() for arg in (name, str(out))]
    proc = subprocess.run([sys.executable, "-c", DRIVER, SCRIPT, config, *argv], cwd=REPO, env=cpu_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return outs, proc.stdout + proc.stderr


@pytest.mark.parametrize("preset", sorted(FAMILY_PRESETS))
def test_family_preset_trains_and_exports(runs, preset):
    outs, log = runs
    assert f"model: {preset}, " in log
    records = metrics(outs[preset])
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["train_loss"]) and r["mfu"] is None for r in records)  # CPU: no MFU
    assert all(r["sift/nonfinite_scores"] == 0 for r in records)
    assert [r["sift/warmup"] for r in records] == [1.0] + [0.0] * (STEPS - 1)
    assert math.isfinite(records[-1]["val_loss"])
    model = AutoModelForMaskedLM.from_pretrained(outs[preset] / "final")
    assert model.config.model_type == FAMILY_PRESETS[preset][0]
    tokenizer = AutoTokenizer.from_pretrained(outs[preset] / "final")
    assert model.config.pad_token_id == tokenizer.pad_token_id and model.config.vocab_size == len(tokenizer)
    ids = tokenizer("the data model", return_tensors="pt")
    ids.pop("token_type_ids", None)
    with torch.no_grad():
        assert model(**ids).logits.shape == (1, ids["input_ids"].shape[1], len(tokenizer))
