"""The unigram counts table of the pretraining job, for freq_loss's unigram baseline: when that
baseline is chosen without a ``sift.freq_loss.frequency_table``, the plan names ``OUTPUT_DIR/unigram_counts.npy``
and the job fills it from the token ids of its own training split before the engine is built."""
from __future__ import annotations

import logging
import os

import torch.distributed as dist

from .. import criteria

logger = logging.getLogger("sift_ds.pretrain")

UNIGRAM_COUNTS_FILE = "unigram_counts.npy"


def job_unigram_table(output_dir: str) -> str:
    """The counts table the job writes in ``output_dir``."""
    return os.path.join(output_dir, UNIGRAM_COUNTS_FILE)


def write_unigram_counts(plan, data, vocab_size: int) -> None:
    """Rank 0 counts the token ids of the training blocks into the plan's table when the plan named
    the job's own (``job_unigram_table``); the other ranks wait (a collective)."""
    sift = plan.sift
    if not (sift.enabled and sift.criterion == "freq_loss" and sift.options.frequency_table == job_unigram_table(
            plan.output_dir)):
        return
    if dist.get_rank() == 0:
        blocks = data.train.with_format("numpy").iter(batch_size=4096)
        counts = criteria.unigram_counts((b["input_ids"] for b in blocks), vocab_size)
        criteria.save_unigram_counts(sift.options.frequency_table, counts)
        logger.info("freq_loss: unigram counts of %d training tokens written to %s", int(counts.sum()),
                    sift.options.frequency_table)
    dist.barrier()
