"""The asynchronous-convergence study's data, prepared once for all its runs: the four tasks of
``sift_ds.study.multitask_data`` built from a corpus, tokenized to a fixed length with a local
tokenizer, the training split subsampled (a fixed sample, the same for every seed) and renumbered
(``example_index``: the row, for a cached teacher), the validation split subsampled likewise, and the
test split whole (fixed by document)."""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import datasets
from transformers import AutoTokenizer

from .multitask_data import TASKS, build, label_counts

SUMMARY = "prep.json"
SAMPLE_SEED = 1234  # the subsamples do not depend on the study's seeds


def _subsample(split: datasets.Dataset, count: Optional[int]) -> datasets.Dataset:
    if count and count < len(split):
        split = split.shuffle(seed=SAMPLE_SEED).select(range(count))
    return split.remove_columns("example_index").add_column("example_index", list(range(len(split))))


def prepare(corpus: str, tokenizer: str, out: str, max_len: int, train_examples: Optional[int],
            validation_examples: Optional[int], sections: int = 12) -> Dict:
    """Writes the splits to ``out`` (``datasets.save_to_disk``; columns input_ids, attention_mask,
    example_index, <task>_labels) and ``prep.json`` beside them; returns that summary. A folder whose
    summary already has these settings is kept as it is."""
    settings = {"corpus": os.path.abspath(corpus), "tokenizer": os.path.abspath(tokenizer), "max_len": max_len,
                "train_examples": train_examples, "validation_examples": validation_examples, "sections": sections}
    summary_path = os.path.join(out, SUMMARY)
    if os.path.exists(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
        if summary["settings"] == settings:
            return summary
    splits, names = build(corpus, sections)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    splits["train"] = _subsample(splits["train"], train_examples)
    splits["validation"] = _subsample(splits["validation"], validation_examples)

    def encode(rows):
        enc = tok(rows["text"], truncation=True, max_length=max_len, padding="max_length")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    splits = splits.map(encode, batched=True, remove_columns=["text", "doc_id"])
    splits.save_to_disk(out)
    summary = {"settings": settings, "vocab_size": len(tok), "section_names": names,
               "classes": {t: (len(names) if t == "section" else 2) for t in TASKS},
               "examples": {s: len(d) for s, d in splits.items()},
               "labels": {s: label_counts(d) for s, d in splits.items()}}
    summary = json.loads(json.dumps(summary))  # as it reads back: label keys are strings
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def load(out: str) -> datasets.DatasetDict:
    return datasets.load_from_disk(out)
