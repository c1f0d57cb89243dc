"""Whether a tokenizer can encode the corpus: a vocabulary of at least ``MIN_VOCAB`` tokens, and a
sample of the corpus (its first documents, up to ``SAMPLE_CHARS`` characters) encoded with at most
``MAX_UNK_SHARE`` of its tokens unknown. A tokenizer directory without its vocabulary file loads as
a tokenizer of its 5 special tokens, which turns almost every word into ``[UNK]``: a model trained
on that learns nothing of the text, so the run is refused at start-up (and by ``--check_only``).
"""
from __future__ import annotations

import itertools
from typing import Iterable, List, Optional, Sequence

import datasets

from .corpus import JSON_SUFFIXES, default_corpus
from .tokenizer import bounded_pieces

MIN_VOCAB = 100  # printable ASCII (95 characters) and BERT's 5 special tokens: below it, text cannot be spelled out
MAX_UNK_SHARE = 0.5  # more of the sample unknown than known: the tokenizer is not this corpus's
SAMPLE_CHARS = 1 << 17  # characters of the corpus encoded to measure the unknown share


def first_texts(texts: Iterable[str], max_chars: int = SAMPLE_CHARS) -> List[str]:
    """The first strings of ``texts`` until ``max_chars`` characters (the last one cut)."""
    sample, total = [], 0
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            continue
        sample.append(text[: max_chars - total])
        total += len(sample[-1])
        if total >= max_chars:
            break
    return sample


def unk_share(tokenizer, texts: Sequence[str]) -> Optional[float]:
    """The share of ``texts``' tokens (no special tokens added) that are the tokenizer's unknown
    token; None when it has none (byte-level vocabularies) or the texts hold no token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk == getattr(tokenizer, "eos_token_id", None):  # a causal BPE's EOS stands in for it
        return None
    pieces = [piece for text in texts for piece in bounded_pieces(text)]
    ids = tokenizer(pieces, add_special_tokens=False, return_attention_mask=False)["input_ids"] if pieces else []
    total = sum(len(row) for row in ids)
    return sum(row.count(unk) for row in ids) / total if total else None


def check_vocabulary(tokenizer, sample: Sequence[str]) -> None:
    """ValueError (one line; the caller names the tokenizer) for a vocabulary below ``MIN_VOCAB``
    tokens or one that encodes ``sample`` with more than ``MAX_UNK_SHARE`` of its tokens unknown."""
    size = len(tokenizer)
    if size < MIN_VOCAB:
        raise ValueError(f"a vocabulary of {size} tokens, fewer than {MIN_VOCAB}: its vocabulary file "
                         "(tokenizer.json or vocab.txt) is missing or not its own")
    share = unk_share(tokenizer, sample)
    if share is not None and share > MAX_UNK_SHARE:
        raise ValueError(f"it encodes {share:.0%} of a sample of the corpus ({sum(map(len, sample))} characters) as "
                         f"{tokenizer.unk_token} (more than {MAX_UNK_SHARE:.0%}): it is not a tokenizer of this "
                         "corpus's text")


def corpus_sample(data_files: Optional[Sequence[str]], text_field: str = "text", dataset_name: Optional[str] = None,
                  sample_by: str = "paragraph", max_chars: int = SAMPLE_CHARS) -> List[str]:
    """The corpus's first documents up to ``max_chars``, read without preparing the corpus (streamed,
    in the order ``corpus.load_corpus`` reads them); [] for a hub dataset (read at start-up only)
    or files the stream cannot read (the job's own reading then reports them)."""
    if dataset_name:
        return []
    if not data_files:
        return first_texts(default_corpus()["text"], max_chars)
    text_files = [f for f in data_files if not f.endswith(JSON_SUFFIXES)]
    json_files = [f for f in data_files if f.endswith(JSON_SUFFIXES)]
    streams = []
    try:
        if text_files:
            stream = datasets.load_dataset("text", data_files=text_files, sample_by=sample_by, split="train",
                                           streaming=True)
            streams.append(row["text"] for row in stream)
        if json_files:
            stream = datasets.load_dataset("json", data_files=json_files, split="train", streaming=True)
            streams.append(row.get(text_field) for row in stream)
        return first_texts(itertools.chain(*streams), max_chars)
    except Exception:  # noqa: BLE001 - datasets raises many kinds for unreadable files; the job names them
        return []
