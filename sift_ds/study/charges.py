"""One-off costs a selecting run pays before its first step, charged to its budget in the study.

Criterion ``stored`` selects by a score file and ``reducible`` subtracts a reference model's loss;
both need work done once, outside the run: scoring the corpus (``launch/score_corpus.py``), and
training the model that scores (the reference model on the held-out split; for ``frozen_entropy``,
the warm-up whose checkpoint scores). The study adds that work to every point of the run's curve,
so a budget-matched figure compares total cost:

* wall-clock: the recorded seconds (the model's ``elapsed_s`` at the scoring checkpoint, and the
  score's own ``seconds`` in the score file's meta);
* samples: the same work in FLOPs (``FlopsModel``: training ``6N + 12LHT`` per token, a forward pass
  a third of it; scoring runs ``masks`` maskings of every training block), divided by the run's own
  training FLOPs per sample -- the backprop samples of the run's model that the work could have bought.

An online reference (``reducible`` with a model directory) pays its per-step forward inside the
run (it is in ``elapsed_s``); only its training is charged here. A score file shared by several
runs is charged in full to each: the conservative reading (offline sifting's point is that the
cost is shared; the report names the charge so a reader can take it out).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Tuple

from transformers import AutoConfig, AutoModelForMaskedLM

from ..config import canonical_section
from ..criteria import criterion_class, criterion_names
from ..criteria.reducible import is_online
from ..score_file import read_meta
from ..pretrain.metrics import FlopsModel, last_step_record
from ..pretrain.models import model_config


@dataclass(frozen=True)
class OneOff:
    seconds: float
    samples: float            # backprop samples of the run's own model with the same FLOPs
    what: Tuple[str, ...]     # what was charged, for the report


NONE = OneOff(0.0, 0.0, ())


def _flops(config, seq_len: int, masked_fraction: float, sparse_head: bool, exit_layer: int) -> FlopsModel:
    model = AutoModelForMaskedLM.from_config(config)
    return FlopsModel.for_masked_lm(model, seq_len, exit_layer, masked_fraction, sparse_head)


def one_off(run_dir: str) -> OneOff:
    """What the run at ``run_dir`` (its ``run_config.json``) paid once before training: NONE for
    vanilla and the online criteria without a reference. Relative paths are read from the working
    directory, as the study recorded them."""
    with open(os.path.join(run_dir, "run_config.json"), encoding="utf-8") as f:
        saved = json.load(f)
    sift, opts = canonical_section(saved["sift"]), saved["options"]  # a run of an older version: its flat keys
    name = sift.get("criterion")
    if not sift.get("enabled") or name not in criterion_names():
        return NONE
    options = criterion_class(name).Options(**(sift.get(name) or {}))
    stored = criterion_class(name)(options, None).stored_scores()
    online = name == "reducible" and is_online(options)
    if stored is None and not online:
        return NONE
    seq_len, fraction, sparse = int(opts["seq_len"]), float(opts["mlm_probability"]), bool(opts.get("sparse_mlm_head"))
    own = _flops(model_config(opts["model"], int(opts["vocab_size"])), seq_len, fraction, sparse, int(sift["exit_layer"]))
    per_sample = own.train_per_token * seq_len
    if online:  # the reducible loss's online reference: its training only
        ref_dir = options.reference
        cost = last_step_record(os.path.dirname(os.path.abspath(ref_dir)))
        ref = _flops(AutoConfig.from_pretrained(ref_dir), seq_len, fraction, True, 1)
        return OneOff(float(cost["elapsed_s"]), cost["samples"] * seq_len * ref.train_per_token / per_sample,
                      (f"reference model training ({cost['step']} steps, {cost['elapsed_s']:.0f} s)",))
    path, name = stored.path, stored.name
    meta = read_meta(path)
    about = meta["scores"][name]
    blocks, masks = int(meta["num_blocks"]), int(about.get("masks", 0))
    seconds, flops, what = float(about.get("seconds", 0.0)), 0.0, [f"scoring {name} ({about.get('seconds', 0):.0f} s)"]
    if "checkpoint" in about:  # frozen_entropy: the warm-up that made the checkpoint, and the exit passes
        checkpoint = about["checkpoint"].rstrip("/")
        step = int(os.path.basename(checkpoint).replace("global_step", ""))
        cost = last_step_record(os.path.dirname(os.path.dirname(checkpoint)), step)
        seconds += float(cost["elapsed_s"])
        flops += cost["samples"] * seq_len * own.train_per_token + blocks * masks * seq_len * own.select_per_token
        what.append(f"the warm-up to step {step} that made the checkpoint ({cost['elapsed_s']:.0f} s)")
    if "reference_training" in about:  # reference_loss: the reference model's training and forward passes
        cost = about["reference_training"] or {}
        if "reference_config" not in about:
            raise ValueError(f"score file {path}: no reference_config in its meta (score the corpus again)")
        config = AutoConfig.for_model(**about["reference_config"])
        ref = _flops(config, seq_len, fraction, True, config.num_hidden_layers)
        seconds += float(cost.get("elapsed_s") or 0.0)
        flops += (cost.get("samples") or 0) * seq_len * ref.train_per_token + blocks * masks * seq_len * ref.select_per_token
        what.append(f"reference model training ({cost.get('steps')} steps, {cost.get('elapsed_s') or 0:.0f} s)")
    return OneOff(seconds, flops / per_sample, tuple(what))
