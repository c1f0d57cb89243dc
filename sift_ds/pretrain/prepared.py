"""The training job's side of prepared data (``--prepared DIR``, written by ``launch/prepare_data.py``):
start-up checks of the manifest against the run, the run's tokenizer and blocks (memory maps: no
tokenization, no barrier on data work), the corpus identity the run records (the preparation's,
the same as a run that tokenizes that corpus in process records), and the note that an in-process
corpus above ``NOTE_BYTES`` would start faster prepared."""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

from ..shards.blocks import check_manifest, open_prepared, read_manifest
from ..shards.layout import TOKENIZER_DIR, tokenizer_digest
from .data import PretrainData, split_blocks
from .options import PretrainOptions
from .tokenizer import load_tokenizer

NOTE_BYTES = 100 << 20  # a --data corpus above this gets the note
IN_JOB_CHARS_PER_S = 1.57e6  # the job's in-process tokenization, one process (docs/benchmarks.md)
CORPUS_OPTIONS = ("data", "dataset_name")


def run_tokenizer(options: PretrainOptions):
    """(tokenizer, name): --tokenizer, or the one the preparation saved in DIR/tokenizer."""
    name = options.tokenizer or os.path.join(options.prepared, TOKENIZER_DIR)
    try:
        return load_tokenizer(name, causal=options.objective == "clm"), name
    except ValueError as err:
        raise ValueError(f"--tokenizer {name}: {err}") from None


def check_prepared(options: PretrainOptions) -> PretrainOptions:
    """The options with the preparation's corpus options (``sample_by``, ``text_field``: what the run
    records), after checking its manifest against the run's --objective, --seq_len, tokenizer and
    --data_seed (one line naming both values when they differ)."""
    given = [f"--{name}" for name in CORPUS_OPTIONS if getattr(options, name)]
    if given:
        raise ValueError(f"--prepared {options.prepared} holds the corpus: give --prepared or {given[0]}, not both")
    manifest = read_manifest(options.prepared)
    tokenizer, name = run_tokenizer(options)
    check_manifest(manifest, options.prepared, options.seq_len, options.objective, tokenizer_digest(tokenizer), name,
                   options.data_seed)
    return dataclasses.replace(options, sample_by=manifest["sample_by"] or options.sample_by,
                               text_field=manifest["text_field"] or options.text_field)


def prepared_data(options: PretrainOptions) -> Tuple[object, PretrainData]:
    """(tokenizer, PretrainData) of --prepared, split as the in-process blocks are (``split_blocks``)."""
    manifest, blocks = open_prepared(options.prepared)
    tokenizer, name = run_tokenizer(options)
    check_manifest(manifest, options.prepared, options.seq_len, options.objective, tokenizer_digest(tokenizer), name,
                   options.data_seed)
    train, val = split_blocks(blocks, options.val_fraction, options.max_val_samples, options.data_seed)
    return tokenizer, PretrainData(train, val, manifest["num_documents"], manifest["num_tokens"])


def prepared_corpus(path: str) -> dict:
    """The corpus identity recorded by the preparation (``run_record.corpus_record``'s)."""
    return read_manifest(path)["corpus"]


def in_job_notes(data_files: Optional[Sequence[str]]) -> List[str]:
    """A note when the --data files are large enough that preparing them once would save start-up time."""
    size = sum(os.path.getsize(f) for f in data_files or ())
    if size <= NOTE_BYTES:
        return []
    minutes = size / IN_JOB_CHARS_PER_S / 60  # ~1 byte per character of English text (more when compressed)
    return [f"the --data corpus is {size / 2**20:.0f} MiB: every start tokenizes it in one process (at least "
            f"{minutes:.0f} min at {IN_JOB_CHARS_PER_S / 1e6:.2f} M characters/s) while the other ranks wait; "
            "launch/prepare_data.py --workers N prepares it once, and a start with --prepared DIR maps it in seconds"]
