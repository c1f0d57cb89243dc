"""The asynchronous-convergence study's task setup (sift_ds.study.multitask_data and
launch/build_multitask_data.py) on a hand-written corpus: which paragraphs are prose or code, each
task's label, the sentence-order swap, the split fixed by document, and a missing corpus refused in
one line."""
import json
import os

import datasets
import pytest

from launch_helpers import load_cli
from launcher import REPO
from sift_ds.study import multitask_data as M

ADMIN = """Admin guide
===========

The first sentence is here. The second one follows! A third closes it.

Run this::

    $ make
    $ make install

    $ reboot

.. note:: a directive, left out

- a list item, left out
"""
MM = """Memory is managed. Pages are mapped.

.. code-block:: c

    int x = 1;
"""
DOCS = [{"id": "admin-guide/a.rst.txt", "text": ADMIN},
        {"id": "translations/zh_CN/admin-guide/b.rst.txt", "text": "第一句。第二句。"},
        {"id": "mm/c.rst.txt", "text": MM},
        {"id": "mm/d.rst.txt", "text": "One sentence only"},
        {"id": "top.rst.txt", "text": "A top-level page. It has two sentences."},
        {"id": "sound/t8.rst.txt", "text": "Tested here."}]


def test_prose_and_code_paragraphs():
    assert list(M.paragraphs(ADMIN)) == [
        ("The first sentence is here. The second one follows! A third closes it.", 0), ("Run this::", 0),
        ("    $ make\n    $ make install", 1), ("    $ reboot", 1)]
    assert list(M.paragraphs(MM)) == [("Memory is managed. Pages are mapped.", 0), ("    int x = 1;", 1)]


def test_sentence_order_halves():
    text = "One. Two! Three?"
    assert M.order_example(text, swap=False) == ("One. Two! Three?", 0)
    assert M.order_example(text, swap=True) == ("Two! Three? One.", 1)
    assert M.order_example("第一句。第二句。", swap=True) == ("第二句。 第一句。", 1)
    assert M.order_example("no sentence end", swap=True) == ("no sentence end", M.IGNORE)


def test_labels_and_the_split_by_document():
    names = M.sections([d["id"] for d in DOCS], 1)
    assert names == ["admin-guide", "other"]  # the translation counts for the section it translates
    rows = list(M.examples(DOCS, names, seed=3))
    by_doc = {}
    for row in rows:
        by_doc.setdefault(row["doc_id"], []).append(row)
        assert row["split"] == M.split_of(row["doc_id"])
    admin, zh, mm = (by_doc[d["id"]] for d in DOCS[:3])
    assert [r["code_labels"] for r in admin] == [0, 0, 1, 1]
    assert {r["section_labels"] for r in admin + zh} == {0} and {r["section_labels"] for r in mm} == {1}
    assert [r["translated_labels"] for r in admin + zh + mm] == [0] * 4 + [1] + [0] * 2
    assert [r["order_labels"] != M.IGNORE for r in admin] == [True, False, False, False]
    assert by_doc["mm/d.rst.txt"][0]["order_labels"] == M.IGNORE
    swapped = [r for r in rows if r["order_labels"] == 1]
    assert swapped and all(r["order_labels"] == 0 for r in rows if r["order_labels"] not in (1, M.IGNORE))
    splits = [M.split_of(d) for d in ("top.rst.txt", "sound/t8.rst.txt", "mm/c.rst.txt")]
    assert splits == ["validation", "test", "train"]  # CRC-32 of the path: fixed


def test_launch_writes_the_splits_and_the_label_counts(tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    script = load_cli(os.path.join(REPO, "launch", "build_multitask_data.py"))
    assert script.main(["--corpus", str(corpus), "--out", str(tmp_path / "out"), "--sections", "1"]) == 0
    splits = datasets.load_from_disk(str(tmp_path / "out"))
    assert {s: len(d) for s, d in splits.items()} == {"train": 8, "validation": 1, "test": 1}
    assert splits["train"]["example_index"] == list(range(8))
    assert set(splits["validation"]["doc_id"]) == {"top.rst.txt"}
    summary = json.loads((tmp_path / "out" / "tasks.json").read_text())
    assert summary["section_names"] == ["admin-guide", "other"]
    assert summary["labels"]["train"]["code"] == {"0": 5, "1": 3}
    (tmp_path / "few.jsonl").write_text(json.dumps(DOCS[0]) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert script.main(["--corpus", str(tmp_path / "few.jsonl"), "--out", str(tmp_path / "o")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after datasets' progress bars
    assert last.startswith(f"build_multitask_data.py: error: {tmp_path / 'few.jsonl'}: no prose "
                                              "paragraph or code block in its validation documents")
    assert script.main(["--corpus", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"build_multitask_data.py: error: --corpus {tmp_path / 'none.jsonl'}: no such file\n"
