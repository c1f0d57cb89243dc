"""A model's masked-LM score of every training block, through the library's own scorer: the early
exit's entropy or loss after ``exit_layer`` layers (at ``L``, the model's own loss), averaged over
``masks`` maskings of the block.

The training loader masks a block anew each epoch (seeded by where the block falls in the data
order), so a score stored once cannot see the training run's masks. It is the mean over ``masks``
maskings drawn from ``(seed, stream, chunk, m)`` with the training run's masking collator: an
estimate of the expected score over masks, closer the more masks are drawn.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import torch

from ..adapters import detect_adapter
from ..pretrain.checkpoint import weights_only_loads
from ..pretrain.models import build_model, set_special_tokens
from ..criteria import early_exit_scores

SCORE_STREAM = 0x5C0_4E5  # seed-sequence tag of the scoring masks (apart from training and validation masks)


@torch.no_grad()
def block_model_scores(model, blocks, collator, exit_layer: int, criterion: str, masks: int = 4,
                       batch_size: int = 64, seed: int = 0, backend: str = "torch") -> np.ndarray:
    """float64 [n]: per block, the mean over ``masks`` maskings of ``criterion`` ("entropy" or "loss")
    after ``exit_layer`` layers of ``model`` (maskings with no masked token left out; ``-inf`` when
    every masking of a block masked nothing)."""
    adapter = detect_adapter(model)
    model.eval()
    device = next(model.parameters()).device
    rows = blocks.with_format("numpy")
    total = np.zeros(len(blocks), dtype=np.float64)
    count = np.zeros(len(blocks), dtype=np.float64)
    for chunk, start in enumerate(range(0, len(blocks), batch_size)):
        columns = rows[start : start + batch_size]
        for m in range(masks):
            batch = collator(columns, seed, SCORE_STREAM, chunk, m)
            batch = {k: v.to(device) for k, v in batch.items() if k != "next_sentence_label"}
            scores = early_exit_scores(adapter, batch, exit_layer, criterion, backend).double().cpu().numpy()
            finite = np.isfinite(scores)
            end = start + len(scores)
            total[start:end] += np.where(finite, scores, 0.0)
            count[start:end] += finite
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), -np.inf)


def model_from_checkpoint(model, checkpoint_dir: str):
    """``model`` with the weights of a pretraining checkpoint (``<run>/checkpoints/global_stepN``, the
    rank-0 model states DeepSpeed wrote), loaded weights-only."""
    path = os.path.join(checkpoint_dir, "mp_rank_00_model_states.pt")
    if not os.path.isfile(path):
        raise ValueError(f"--checkpoint {checkpoint_dir}: no {os.path.basename(path)} (a pretraining checkpoint "
                         f"directory, <run>/checkpoints/global_stepN, is expected)")
    with weights_only_loads():
        state = torch.load(path, map_location="cpu")
    model.load_state_dict(state["module"])
    return model


def checkpoint_model(plan, tokenizer, checkpoint_dir: str):
    """The model of a pretraining ``RunPlan`` (its config, the tokenizer's vocabulary) with the weights
    of ``checkpoint_dir``."""
    config = copy.deepcopy(plan.model_config)
    config.vocab_size = len(tokenizer)
    set_special_tokens(config, tokenizer)
    return model_from_checkpoint(build_model(config, plan.options.objective), checkpoint_dir)
