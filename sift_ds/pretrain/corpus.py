"""The raw pretraining corpus, as one ``datasets.Dataset`` with a ``text`` column (one row per document):

  * text files or globs: documents separated by blank lines (BERT's format: one sentence per line,
    a blank line between documents), or one per line, or one per file (``sample_by``: the ``datasets``
    text builder's ``paragraph``, ``line`` or ``document``);
  * ``.json`` / ``.jsonl`` files, optionally compressed (``.gz``, ``.xz``, ``.bz2``, ``.zst``):
    JSON lines with a text field;
  * a ``datasets`` hub name + config (for machines with a network);
  * nothing: the English documentation text shipped inside CPython (``pydoc_data.topics``), a corpus
    present on every machine.
"""
from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import logging
import lzma
import os
from typing import List, Optional, Sequence, Tuple

import datasets
from pydoc_data.topics import topics

logger = logging.getLogger(__name__)
STRING = datasets.Value("string")
TEXT_SAMPLES = ("paragraph", "line", "document")  # what one document of a text file is (``sample_by``)
JSON_SUFFIXES = tuple(f"{base}{z}" for base in (".json", ".jsonl") for z in ("", ".gz", ".xz", ".bz2", ".zst"))


def resolve_data_files(patterns: Sequence[str]) -> List[str]:
    """Files named by paths or globs (``**`` recursive), sorted and de-duplicated; a pattern that
    matches nothing is a ValueError naming it."""
    files = []
    for pattern in patterns:
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            what = "no file matches the glob" if glob.has_magic(pattern) else "file not found"
            raise ValueError(f"--data {pattern}: {what}")
        files.extend(m for m in matches if m not in files)
    return files


def check_not_empty(files: Sequence[str]) -> List[str]:
    """``files``, or a ValueError when every one of them is empty."""
    if all(os.path.getsize(f) == 0 for f in files):
        raise ValueError(f"empty corpus: every --data file is empty ({', '.join(files)})")
    return list(files)


# The first bytes of each compressed format ``datasets`` reads by file name.
MAGIC = {".gz": b"\x1f\x8b", ".xz": b"\xfd7zXZ\x00", ".bz2": b"BZh", ".zst": b"\x28\xb5\x2f\xfd"}


def check_compression(files: Sequence[str]) -> List[str]:
    """``files``, or a ValueError naming the first whose name promises a compression its bytes lack."""
    for path in files:
        suffix = os.path.splitext(path)[1]
        if suffix in MAGIC:
            with open(path, "rb") as f:
                head = f.read(len(MAGIC[suffix]))
            if head != MAGIC[suffix]:
                raise ValueError(f"--data {path}: not a {suffix[1:]} file (its name ends in {suffix}, its bytes "
                                 "are not that format's)")
    return list(files)


def check_dataset_name(name: str) -> None:
    """A local ``--dataset_name`` directory must hold data files, not a loading script (which would be code)."""
    if not os.path.isdir(name):
        return
    scripts = sorted(f for f in os.listdir(name) if f.endswith(".py"))
    if scripts:
        raise ValueError(f"--dataset_name {name}: holds a dataset loading script ({scripts[0]}); scripts are code and "
                         "are not run: give its data files with --data instead")


EMBEDDED_CORPUS_MAX_HIDDEN = 768  # BERT-base's hidden size: from there on, the embedded corpus needs consent
EMBEDDED_CORPUS_KB = 465


def check_embedded_corpus(options, hidden_size: int) -> None:
    """A model of BERT-base size or larger (``EMBEDDED_CORPUS_MAX_HIDDEN``) with no corpus given would
    train on the embedded demo corpus: refused, naming ``--allow_embedded_corpus``, which makes it deliberate."""
    given = options.data or options.dataset_name or getattr(options, "prepared", None)
    if given or options.allow_embedded_corpus or hidden_size < EMBEDDED_CORPUS_MAX_HIDDEN:
        return
    raise ValueError(f"--model {options.model} (hidden size {hidden_size}) with no --data: it would train on the "
                     f"embedded demo corpus (CPython's documentation, about {EMBEDDED_CORPUS_KB} kB); give the corpus "
                     "with --data (or --dataset_name / --prepared), or --allow_embedded_corpus true if that is meant")


def default_corpus():
    """CPython's English documentation topics (``pydoc_data.topics``), one document per topic."""
    return datasets.Dataset.from_dict({"text": [topics[k] for k in sorted(topics)]})


def load_corpus(
    data_files: Optional[Sequence[str]] = None,
    text_field: str = "text",
    dataset_name: Optional[str] = None,
    dataset_config: Optional[str] = None,
    dataset_split: str = "train",
    cache_dir: Optional[str] = None,
    sample_by: str = "paragraph",
):
    """The raw corpus as a ``datasets.Dataset`` with one ``text`` column (see the module docstring)."""

    if data_files and dataset_name:
        raise ValueError("give either --data files or --dataset_name, not both")
    if dataset_name:
        ds = datasets.load_dataset(dataset_name, dataset_config, split=dataset_split, cache_dir=cache_dir)
        return _text_column(ds, text_field, dataset_name)
    if not data_files:
        return default_corpus()
    files = check_not_empty(resolve_data_files(data_files))
    json_files = [f for f in files if f.endswith(JSON_SUFFIXES)]
    text_files = [f for f in files if f not in json_files]
    parts = []
    try:
        if text_files:
            parts.append(datasets.load_dataset(
                "text", data_files=text_files, sample_by=sample_by, split="train", cache_dir=cache_dir))
        if json_files:
            ds = datasets.load_dataset("json", data_files=json_files, split="train", cache_dir=cache_dir)
            parts.append(_text_column(ds, text_field, ", ".join(json_files)))
    except datasets.exceptions.DatasetGenerationError as err:
        bad = first_undecodable(files)
        if bad:
            raise ValueError(f"--data {bad[0]}: not UTF-8 text (byte 0x{bad[2]:02x} at offset {bad[1]}); convert it "
                             "to UTF-8 (e.g. iconv) or leave it out") from None
        raise ValueError(f"cannot read --data {', '.join(files)}: {err.__cause__ or err}") from err
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def first_undecodable(files: Sequence[str]) -> Optional[Tuple[str, int, int]]:
    """(file, offset, byte) of the first byte of ``files`` that is not UTF-8 (compressed files are read
    decompressed, ``.zst`` not at all); None when every file decodes (read only when a read failed)."""
    for path in files:
        opener = OPENERS.get(os.path.splitext(path)[1], open)
        if path.endswith(".zst"):
            continue
        decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    return path, offset - (len(err.object) - len(chunk)) + err.start, err.object[err.start]
                offset += len(chunk)
    return None


def _text_column(ds, field: str, source: str):
    """The ``field`` column as a string column ``text``; rows whose value is null, missing or not a
    string (a number, a list) are dropped, and their count is logged."""
    if field not in ds.column_names:
        raise ValueError(f"{source} has no text field {field!r} (--text_field); its fields are {ds.column_names}")
    ds = ds.select_columns([field])
    total = len(ds)
    ds = ds.filter(lambda batch: [isinstance(t, str) for t in batch[field]], batched=True,
                   desc=f"rows with a string {field!r}")
    if len(ds) < total:
        logger.warning("%s: skipped %d of %d rows whose %r is null, missing or not a string", source,
                       total - len(ds), total, field)
    if ds.features[field] != STRING:  # a column of mixed JSON values: strings only are left
        ds = ds.map(lambda batch: {"text": batch[field]}, batched=True, remove_columns=[field],
                    features=datasets.Features({"text": STRING}))
    return ds.rename_column(field, "text") if field in ds.column_names and field != "text" else ds
