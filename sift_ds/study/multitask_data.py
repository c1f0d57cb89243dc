"""A multi-task setup for studies of asynchronous convergence (docs/multitask.md), derived from a corpus
of reStructuredText documents in the ``{"id": <relative path>, "text": ...}`` JSON-lines form of
``launch/build_corpus.py`` (e.g. the Linux kernel's documentation): no hub, no hand labels.

An example is one paragraph (a block between blank lines) that is either prose (its first line is
not indented and starts with a letter) or a literal code block (every line indented, after a
paragraph that ends with ``::`` or a ``.. code-block::`` directive); headings, tables, directives,
lists and quotes are left out. Its labels (-100: the task does not cover the example):

* ``section`` (many classes): the top folder of the document's path, with ``translations/<lang>/``
  taken off (a translation belongs to the section it translates); the ``sections`` most frequent
  folders by documents have a class each, the rest share ``other``;
* ``code``: 1 for a literal code block, 0 for prose;
* ``translated``: 1 when the document is under ``translations/``, 0 otherwise;
* ``order``: prose of two or more sentences only; it is cut at the middle sentence boundary, and with
  probability 1/2 (a hash of the seed, the document and the paragraph) the halves are swapped in the
  example's text: 1 swapped, 0 in order.

The fifth task, masked LM, takes its labels from the collator at training time. The split is fixed
by document: a CRC-32 of the document's path puts 1 in 20 documents in ``test``, 1 in 20 in
``validation``, the rest in ``train``."""
from __future__ import annotations

import collections
import re
import zlib
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import datasets

TASKS = ("section", "code", "translated", "order")
IGNORE = -100
SPLITS = ("train", "validation", "test")
OTHER = "other"
_CODE_DIRECTIVE = re.compile(r"^\.\.\s+(code-block|code|sourcecode)::")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])\s*")


def split_of(doc_id: str) -> str:
    bucket = zlib.crc32(doc_id.encode("utf-8")) % 20
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def section_of(doc_id: str) -> str:
    parts = doc_id.split("/")
    if parts[0] == "translations" and len(parts) > 2:
        parts = parts[2:]
    return parts[0] if len(parts) > 1 else "(top)"


def sections(doc_ids: Iterable[str], count: int) -> List[str]:
    """The ``count`` most frequent sections by documents (ties by name), then ``other``."""
    freq = collections.Counter(section_of(d) for d in doc_ids)
    return [name for name, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:count]] + [OTHER]


def paragraphs(text: str) -> Iterator[Tuple[str, int]]:
    """(paragraph, code label) for the prose paragraphs (0) and literal code blocks (1) of ``text``."""
    previous = ""
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        paragraph = "\n".join(lines)
        indented = all(line[:1] in (" ", "\t") for line in lines)
        opens_code = previous.rstrip().endswith("::") or bool(_CODE_DIRECTIVE.match(previous.lstrip()))
        if indented and opens_code:
            yield paragraph, 1
        elif not indented and lines[0][:1].isalpha() and not _is_heading(lines):
            yield " ".join(line.strip() for line in lines), 0
        if not indented or not opens_code:  # a code block's later paragraphs keep its opener
            previous = paragraph


def _is_heading(lines: Sequence[str]) -> bool:
    return any(len(set(line.strip())) == 1 and line.strip()[0] in "=-~^*#+`'\"" for line in lines)


def order_example(paragraph: str, swap: bool) -> Tuple[str, int]:
    """(text, label) of the sentence-order task: the halves swapped (1) or not (0); IGNORE for fewer
    than two sentences."""
    sentences = [s for s in _SENTENCE_END.split(paragraph) if s]
    if len(sentences) < 2:
        return paragraph, IGNORE
    middle = len(sentences) // 2
    first, second = " ".join(sentences[:middle]), " ".join(sentences[middle:])
    return (f"{second} {first}", 1) if swap else (f"{first} {second}", 0)


def _coin(seed: int, doc_id: str, index: int) -> bool:
    return zlib.crc32(f"{seed}\0{doc_id}\0{index}".encode("utf-8")) % 2 == 1


def examples(documents: Iterable[Mapping[str, str]], section_names: Sequence[str], seed: int = 0
             ) -> Iterator[Dict[str, object]]:
    classes = {name: i for i, name in enumerate(section_names)}
    for doc in documents:
        doc_id = doc["id"]
        section = classes.get(section_of(doc_id), classes[OTHER])
        for index, (paragraph, code) in enumerate(paragraphs(doc["text"])):
            text, order = (paragraph, IGNORE) if code else order_example(paragraph, _coin(seed, doc_id, index))
            yield {"text": text, "doc_id": doc_id, "split": split_of(doc_id), "section_labels": section,
                   "code_labels": code, "translated_labels": int(doc_id.startswith("translations/")),
                   "order_labels": order}


def build(corpus: str, section_count: int = 12, seed: int = 0, cache_dir: Optional[str] = None
          ) -> Tuple[datasets.DatasetDict, List[str]]:
    """The three splits of the corpus file ``corpus`` and the section names (the label ``i`` is
    ``names[i]``). Each split has ``example_index`` (its row number, for a cached teacher)."""
    docs = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=cache_dir)
    for column in ("id", "text"):
        if column not in docs.column_names:
            raise ValueError(f"{corpus}: no {column!r} field in its records (fields: {', '.join(docs.column_names)})")
    names = sections(docs["id"], section_count)
    rows = {split: [] for split in SPLITS}
    for row in examples(docs, names, seed):
        rows[row.pop("split")].append(row)
    empty = [split for split in SPLITS if not rows[split]]
    if empty:
        raise ValueError(f"{corpus}: no prose paragraph or code block in its {empty[0]} documents (1 in 20 documents "
                         "by a CRC-32 of the path go to test, 1 in 20 to validation): too few documents")
    parts = {}
    for split, items in rows.items():
        columns = {key: [r[key] for r in items] for key in ("text", "doc_id", *(f"{t}_labels" for t in TASKS))}
        parts[split] = datasets.Dataset.from_dict(dict(columns, example_index=list(range(len(items)))))
    return datasets.DatasetDict(parts), names


def label_counts(split: datasets.Dataset) -> Dict[str, Dict[int, int]]:
    """Per task, how many examples carry each label (IGNORE: not covered)."""
    return {t: dict(sorted(collections.Counter(split[f"{t}_labels"]).items())) for t in TASKS}
