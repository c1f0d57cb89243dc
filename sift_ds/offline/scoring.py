"""Scoring a run's training blocks once (``launch/score_corpus.py``): the free text statistics and
the model scores by name, each with a record of how it was made and what it cost."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..pretrain.metrics import last_step_record
from .model_scores import block_model_scores
from ..criteria.columns import REFERENCE_LOSS
from .text_stats import TEXT_SCORES, block_text_scores

FROZEN_ENTROPY = "frozen_entropy"  # the early exit's entropy of a fixed checkpoint (e.g. the end of the warm-up)
MODEL_SCORES = (FROZEN_ENTROPY, REFERENCE_LOSS)
SCORE_NAMES = tuple(TEXT_SCORES) + MODEL_SCORES


def training_cost(model_dir: str) -> Optional[Dict[str, Any]]:
    """What training the model of a pretraining run's ``final/`` directory cost: from the last step
    record of the run's ``metrics.jsonl`` (steps, samples trained on, training wall time), or None
    without one."""
    run = os.path.dirname(os.path.abspath(model_dir))
    try:
        last = last_step_record(run)
    except ValueError:
        return None
    return {"run": os.path.relpath(run), "steps": last["step"], "samples": last.get("samples"),
            "gross_samples": last.get("gross_samples"), "elapsed_s": last.get("elapsed_s")}


def score_blocks(names: Sequence[str], blocks, collator=None, exit_model=None, exit_layer: int = 1,
                 reference=None, masks: int = 4, batch_size: int = 64,
                 seed: int = 0) -> Tuple[Dict[str, np.ndarray], Dict[str, Dict[str, Any]]]:
    """(name -> float64 [len(blocks)], name -> how it was made): ``unigram_entropy`` and
    ``unique_share`` from the token ids; ``frozen_entropy`` from ``exit_model``'s exit
    ``exit_layer``; ``reference_loss`` from ``reference``'s own loss (every layer). Model scores are
    means over ``masks`` maskings by ``collator`` (``sift_ds.offline.model_scores``)."""
    scores, about = {}, {}
    for name in names:
        start = time.perf_counter()
        if name in TEXT_SCORES:
            scores[name] = block_text_scores(blocks, name)
            about[name] = {"what": f"the block's {name.replace('_', ' ')} over its token ids (special tokens left out)"}
        elif name == FROZEN_ENTROPY:
            scores[name] = block_model_scores(exit_model, blocks, collator, exit_layer, "entropy", masks, batch_size, seed)
            about[name] = {"what": f"mean early-exit entropy after layer {exit_layer} of a fixed checkpoint over "
                                   f"{masks} maskings", "exit_layer": exit_layer, "masks": masks}
        elif name == REFERENCE_LOSS:
            layers = reference.config.num_hidden_layers
            scores[name] = block_model_scores(reference, blocks, collator, layers, "loss", masks, batch_size, seed)
            about[name] = {"what": f"mean masked-LM loss of the reference model over {masks} maskings", "masks": masks}
        else:
            raise ValueError(f"unknown score {name!r}; known: {', '.join(SCORE_NAMES)}")
        about[name]["seconds"] = round(time.perf_counter() - start, 3)
    return scores, about
