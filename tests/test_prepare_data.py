"""launch/prepare_data.py: blocks prepared by N workers are byte-identical to one worker's and are the
training job's in-process blocks (mlm, mlm+nsp, clm); a preparation killed mid-shard resumes to the
same bytes, and a finished one is left untouched; each bad input is one line or a counted skip; a
Megatron indexed dataset written by megatron-core's own builder prepares into the same blocks and trains; and
the training side refuses a preparation made for another run, in one line naming both values."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from pydoc_data.topics import topics

from launch_helpers import cpu_env, load_cli, metrics, one_line_error, run_python, small_config
from launcher import REPO
from sift_ds.shards.blocks import open_prepared, read_manifest
from sift_ds.prepare.pipeline import Request, prepare
from sift_ds.pretrain import corpus as corpus_lib, data as data_lib, tokenizer as tok

TOKENIZER = os.path.join(REPO, "ds_configs", "tokenizers", "pydoc_wordpiece_4096")
PREPARE = os.path.join(REPO, "launch", "prepare_data.py")
SEQ = 64


def tree(folder) -> dict:
    """{relative path: sha256} of every file under ``folder``."""
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(folder) for f in files}


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    """CPython's documentation, one text per line: 8,716 documents, 9 shards of 1,000."""
    text = [line for key in sorted(topics) for line in topics[key].splitlines() if line.strip()]
    path = tmp_path_factory.mktemp("corpus") / "lines.txt"
    path.write_text("\n".join(text) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A byte-level BPE tokenizer (with EOS) for the causal-LM packing."""
    folder = tmp_path_factory.mktemp("bpe") / "tokenizer"
    tok.train_bpe(tok.batched_texts(corpus_lib.default_corpus()), 600).save_pretrained(folder)
    return str(folder)


def request(out, data, tokenizer=TOKENIZER, **kw):
    return Request(out=str(out), data=[data], tokenizer=tokenizer, seq_len=SEQ, sample_by="line",
                   documents_per_shard=1000, cache_dir=str(os.path.dirname(data)), **kw)


@pytest.mark.parametrize("objective", ["mlm", "mlm+nsp", "clm"])
def test_two_workers_are_byte_identical_to_one_and_to_the_in_process_blocks(lines, bpe, tmp_path, objective):
    tokenizer = bpe if objective == "clm" else TOKENIZER
    one = prepare(request(tmp_path / "one", lines, tokenizer, objective=objective, workers=1, data_seed=3))
    prepare(request(tmp_path / "two", lines, tokenizer, objective=objective, workers=2, data_seed=3))
    assert len(one["shards"]) == 9 and one["dtype"] == "uint16"
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    assert np.load(tmp_path / "one" / "shard-00000.input_ids.npy", mmap_mode="r").dtype == np.uint16

    run_tokenizer = tok.load_tokenizer(tokenizer, causal=objective == "clm")
    corpus = corpus_lib.load_corpus([lines], sample_by="line", cache_dir=str(tmp_path / "cache"))
    job = data_lib.build_pretrain_data(corpus, run_tokenizer, SEQ, objective, seed=3, cache_dir=str(tmp_path / "cache"))
    _, blocks = open_prepared(str(tmp_path / "two"))
    train, val = data_lib.split_blocks(blocks, 0.05, 2000, 3)
    assert (one["num_documents"], one["num_tokens"]) == (job.num_documents, job.num_tokens)
    for mine, theirs in ((train, job.train), (val, job.val)):
        want, got = theirs.with_format("numpy")[:], mine.with_format("numpy")[:]
        assert list(got) == list(want) and len(mine) == len(theirs)
        for column in want:
            assert got[column].dtype == want[column].dtype and np.array_equal(got[column], want[column]), column


def test_a_preparation_killed_mid_shard_resumes_to_the_same_bytes(lines, tmp_path, capsys):
    reference = tmp_path / "reference"
    prepare(request(reference, lines, workers=1))
    out = tmp_path / "killed"
    command = [sys.executable, PREPARE, "--data", lines, "--tokenizer", TOKENIZER, "--seq_len", str(SEQ),
               "--sample_by", "line", "--documents_per_shard", "1000", "--workers", "1", "--out", str(out),
               "--cache_dir", os.path.dirname(lines)]
    proc = subprocess.Popen(command, cwd=REPO, env=cpu_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (out / "shard-00001.json").exists() and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (out / "manifest.json").exists(), "the preparation finished before it was killed"
    with pytest.raises(ValueError, match="no manifest.json: not a prepared directory, or its preparation did not"):
        read_manifest(str(out))
    # What a kill inside a shard's writes leaves: a temporary file, and a shard whose record is missing.
    (out / "shard-00002.input_ids.npy.tmp").write_bytes(b"\x93NUMPY half")
    (out / "shard-00001.json").unlink()
    kept = os.path.getmtime(out / "shard-00000.input_ids.npy")
    load_cli(PREPARE).main(command[2:])
    assert tree(out) == tree(reference)
    assert os.path.getmtime(out / "shard-00000.input_ids.npy") == kept  # a finished shard is not redone
    before = {p: os.path.getmtime(out / p) for p in tree(out)}
    capsys.readouterr()
    load_cli(PREPARE).main(command[2:])  # over a finished preparation: nothing changes
    assert {p: os.path.getmtime(out / p) for p in tree(out)} == before
    out_again = capsys.readouterr().out
    assert "prepare_data.py: " in out_again and f"{read_manifest(str(out))['num_blocks']} blocks" in out_again


def prepare_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        load_cli(PREPARE).main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("prepare_data.py: error: "), err
    return err


def test_each_bad_input_is_one_line_or_a_counted_skip(lines, tmp_path, capsys, caplog):
    common = ["--tokenizer", TOKENIZER, "--seq_len", SEQ, "--workers", 1, "--cache_dir", tmp_path / "cache"]
    empty, bad, good = tmp_path / "empty.txt", tmp_path / "latin1.txt", tmp_path / "good.txt"
    empty.write_bytes(b"")
    good.write_text(topics["assert"] + "\n\n" + topics["if"])
    bad.write_bytes("caf\u00e9 au lait\n".encode() * 100 + "na\u00efve\n".encode("latin-1"))
    assert f"every --data file is empty ({empty})" in prepare_error(capsys, ["--data", empty, "--out", tmp_path / "a"] + common)
    offset = len("caf\u00e9 au lait\n".encode()) * 100 + 2
    assert prepare_error(capsys, ["--data", bad, "--out", tmp_path / "b"] + common).endswith(
        f"--data {bad}: not UTF-8 text (byte 0xef at offset {offset}); convert it to UTF-8 (e.g. iconv) or leave it out")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [{"text": topics["assert"]}, {"id": 2}, {"text": topics["if"]}]))
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text(json.dumps({"id": 1, "body": "x"}) + "\n")
    assert f"{no_text} has no text field 'text' (--text_field)" in prepare_error(
        capsys, ["--data", no_text, "--out", tmp_path / "c"] + common)

    huge = tmp_path / "huge.txt"  # one line one character over the default limit (64 Mi characters)
    with open(huge, "w") as f:
        f.write(("word " * (1 << 24))[: (1 << 26) + 1] + "\n")
    caplog.set_level("WARNING")
    for name, data, skipped in (("with_empty", [empty, good], 0), ("rows", [rows], 0), ("huge", [huge, good], 1)):
        argv = [x for d in data for x in ("--data", d)] + ["--out", tmp_path / name] + common
        load_cli(PREPARE).main([str(a) for a in argv])
        manifest = read_manifest(str(tmp_path / name))
        assert manifest["skipped_long_documents"] == skipped and manifest["num_blocks"] > 2
    log = caplog.text
    assert f"skipped 1 empty file(s): {empty}" in log
    assert f"{rows}: skipped 1 of 3 rows whose 'text' is null, missing or not a string" in log
    assert "skipped 1 document(s) longer than --max_document_chars 67108864 characters" in log
    huge_run, good_run = (read_manifest(str(tmp_path / name)) for name in ("huge", "with_empty"))
    assert huge_run["num_documents"] == good_run["num_documents"] + 1 and huge_run["num_tokens"] == good_run["num_tokens"]
    assert read_manifest(str(tmp_path / "rows"))["num_documents"] == 2
    err = prepare_error(capsys, ["--data", empty, "--data", good, "--out", tmp_path / "with_empty", "--tokenizer",
                                 TOKENIZER, "--seq_len", 32, "--workers", 1, "--cache_dir", tmp_path / "cache"])
    assert err.endswith(f"--out {tmp_path / 'with_empty'} holds a preparation with seq_len 64, this command asks for "
                        "32: use another --out (or delete it to prepare again)")


def test_a_megatron_indexed_dataset_prepares_into_the_in_process_blocks_and_trains(lines, tmp_path, capsys):
    """Written by megatron-core's own IndexedDatasetBuilder, one sequence per sentence (here a line),
    documents of several lines, an end-of-document token after each (``--append-eod``); then 2 steps
    of pretrain_bert.py from it. A tokenizer too small for its ids is refused in one line."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    tokenizer = tok.load_tokenizer(TOKENIZER)
    text = open(lines).read().splitlines()
    documents = ["\n".join(text[i : i + 7]) for i in range(0, len(text), 7)]
    builder = IndexedDatasetBuilder(str(tmp_path / "docs_text_sentence.bin"), dtype=np.uint16)
    for doc in documents:
        sentences = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in doc.split("\n")]
        sentences[-1] = sentences[-1] + [tokenizer.sep_token_id]
        builder.add_document(np.array([t for s in sentences for t in s]), [len(s) for s in sentences])
    builder.finalize(str(tmp_path / "docs_text_sentence.idx"))
    out = tmp_path / "prepared"
    load_cli(PREPARE).main(["--megatron_prefix", str(tmp_path / "docs_text_sentence"), "--tokenizer", TOKENIZER,
                            "--seq_len", str(SEQ), "--workers", "2", "--documents_per_shard", "1000", "--out", str(out)])
    corpus = corpus_lib.load_corpus([str(write_documents(tmp_path, documents))], sample_by="paragraph",
                                    cache_dir=str(tmp_path / "cache"))
    job = data_lib.build_pretrain_data(corpus, tokenizer, SEQ, cache_dir=str(tmp_path / "cache"))
    _, blocks = open_prepared(str(out))
    train, _ = data_lib.split_blocks(blocks, 0.05, 2000, 0)
    assert np.array_equal(train["input_ids"], job.train.with_format("numpy")["input_ids"])
    run = run_python(["--ds_config", small_config(tmp_path, max_steps=2), "--prepared", out, "--output_dir",
                      tmp_path / "run"], timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in metrics(tmp_path / "run"))
    small = tmp_path / "small_vocab"
    tok.train_wordpiece(tok.batched_texts(corpus_lib.default_corpus()), 300).save_pretrained(small)
    capsys.readouterr()  # what this test printed before (megatron-core's import warnings among it)
    err = prepare_error(capsys, ["--megatron_prefix", tmp_path / "docs_text_sentence", "--tokenizer", small,
                                 "--out", tmp_path / "other", "--workers", 1])
    assert "beyond the tokenizer's" in err and "give the --tokenizer the dataset was made with" in err


def write_documents(tmp_path, documents):
    path = tmp_path / "documents.txt"
    path.write_text("\n\n".join(documents) + "\n")
    return path


@pytest.fixture(scope="module")
def prepared(lines, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "p"
    prepare(request(out, lines, workers=1))
    return str(out)


@pytest.mark.parametrize("flags,message", [
    (["--seq_len", "32"], "was prepared with --seq_len 64, this run has 32: prepare it with --seq_len 32"),
    (["--objective", "mlm+nsp"], "was prepared with --objective mlm, this run has mlm+nsp"),
    (["--tokenizer", "SMALL"], "was prepared with the tokenizer sha256 "),
    (["--data", "LINES"], "holds the corpus: give --prepared or --data, not both"),
])
def test_a_preparation_for_another_run_is_refused_in_one_line(prepared, lines, tmp_path, capsys, flags, message):
    small = tmp_path / "small"
    tok.train_wordpiece(tok.batched_texts(corpus_lib.default_corpus()), 300).save_pretrained(small)
    flags = [{"SMALL": str(small), "LINES": lines}.get(f, f) for f in flags]
    argv = ["--ds_config", small_config(tmp_path), "--prepared", prepared, "--check_only", "--output_dir",
            str(tmp_path / "run"), "--seq_len", str(SEQ)] + flags
    err = one_line_error(capsys, argv)
    assert message in err, err
    if flags[0] == "--tokenizer":
        assert f"this run has {small} (sha256 " in err and "train with the tokenizer it holds" in err


def test_run_mlm_sift_reads_prepared_blocks_and_refuses_another_length(prepared, capsys):
    script = load_cli(os.path.join(REPO, "launch", "run_mlm_sift.py"))
    args = script.DataTrainingArguments(prepared=prepared, validation_split_percentage=5)
    tokenizer = tok.load_tokenizer(TOKENIZER)
    splits = script.prepared_datasets(args, tokenizer, SEQ, TOKENIZER)
    _, blocks = open_prepared(prepared)
    assert len(splits["validation"]) == round(0.05 * len(blocks)) and len(splits["train"]) + len(
        splits["validation"]) == len(blocks)
    assert splits["train"][0]["input_ids"] == blocks[len(splits["validation"])]["input_ids"].tolist()
    with pytest.raises(ValueError, match="was prepared with --max_seq_length 64, this run has 128"):
        script.prepared_datasets(args, tokenizer, 128, TOKENIZER)
    with pytest.raises(ValueError, match="give --prepared or --train_file, not both"):
        script.DataTrainingArguments(prepared=prepared, train_file=prepared + "/settings.json")


def test_a_large_in_process_corpus_gets_a_note_naming_prepare_data(tmp_path, capsys):
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(101 << 20)  # sparse: its size is what counts
    load_cli().main(["--ds_config", small_config(tmp_path), "--data", str(big), "--check_only", "--output_dir",
                     str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "note: the --data corpus is 101 MiB: every start tokenizes it in one process (at least 1 min at 1.57 M " \
           "characters/s) while the other ranks wait; launch/prepare_data.py --workers N prepares it once" in out
    small = tmp_path / "small.txt"
    small.write_text(topics["assert"])
    load_cli().main(["--ds_config", small_config(tmp_path), "--data", str(small), "--check_only", "--output_dir",
                     str(tmp_path / "run")])
    assert "prepare_data.py" not in capsys.readouterr().out
