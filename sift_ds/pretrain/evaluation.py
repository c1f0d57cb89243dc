"""Validation of the pretraining job: masked-LM loss and accuracy (and NSP loss and accuracy) over fixed,
pre-masked validation batches, or a causal LM's next-token loss and top-1 accuracy over fixed
blocks, summed over all ranks."""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..adapters import aligned_labels
from ..kernels import IGNORE_INDEX


def all_reduce_sum(values: List[float], device) -> List[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(engine, batches: List[Dict[str, torch.Tensor]]) -> Dict[str, float]:
    """Masked-LM loss and accuracy (and NSP loss and accuracy when the batches carry NSP labels) over this
    rank's fixed validation batches, summed over all ranks. A causal LM's position i is scored
    against ``labels[:, i + 1]`` (its adapter's ``align_labels``): next-token loss and accuracy."""
    module = engine.module
    was_training = module.training
    module.eval()
    sums = [0.0] * 6  # mlm loss, mlm correct, mlm count, nsp correct, nsp count, nsp loss
    try:
        for batch in batches:
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            labels, nsp_labels = batch.pop("labels"), batch.pop("next_sentence_label", None)
            out = engine(**batch)
            logits = getattr(out, "prediction_logits", None)
            logits = out.logits if logits is None else logits
            labels = aligned_labels(engine.adapter, labels)
            mask = labels != IGNORE_INDEX
            picked, targets = logits[mask].float(), labels[mask]
            sums[0] += F.cross_entropy(picked, targets, reduction="sum").item()
            sums[1] += (picked.argmax(-1) == targets).sum().item()
            sums[2] += mask.sum().item()
            if nsp_labels is not None:
                valid = nsp_labels != IGNORE_INDEX
                sums[3] += (out.seq_relationship_logits.argmax(-1) == nsp_labels)[valid].sum().item()
                sums[4] += valid.sum().item()
                sums[5] += F.cross_entropy(out.seq_relationship_logits[valid].float(), nsp_labels[valid],
                                           reduction="sum").item()
    finally:
        module.train(was_training)
    loss, correct, count, nsp_correct, nsp_count, nsp_loss = all_reduce_sum(sums, engine.device)
    result = {"val_loss": loss / max(count, 1.0), "val_acc": correct / max(count, 1.0)}
    if nsp_count:
        result["val_nsp_acc"] = nsp_correct / nsp_count
        result["val_nsp_loss"] = nsp_loss / nsp_count
    return result
