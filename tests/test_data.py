"""Data pipeline: corpus sources, tokenizer, packing, split, sharding, resumable order, masking."""
import json
import os

import numpy as np
import pytest
import torch

from sift_ds.pretrain import corpus as C, data as D
from sift_ds.pretrain import tokenizer as T
from sift_ds.pretrain.loader import EVAL_STREAM, GrossBatchLoader, MaskingCollator, fixed_eval_batches, take

SEQ = 32


@pytest.fixture(scope="module")
def corpus():
    return C.default_corpus()


@pytest.fixture(scope="module")
def tok(corpus):
    return T.train_wordpiece(T.batched_texts(corpus), vocab_size=600)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def mlm(corpus, tok, cache):
    return D.build_pretrain_data(corpus, tok, SEQ, "mlm", val_fraction=0.05, max_val=200, seed=0, cache_dir=cache)


@pytest.fixture(scope="module")
def nsp(corpus, tok, cache):
    return D.build_pretrain_data(corpus, tok, SEQ, "mlm+nsp", val_fraction=0.05, max_val=200, seed=0, cache_dir=cache)


# ---------------------------------------------------------------------------------------- sources
def test_default_corpus_is_cpython_docs(corpus):
    from pydoc_data.topics import topics

    assert len(corpus) == len(topics) > 50
    assert corpus.column_names == ["text"]
    assert sum(len(t) for t in corpus["text"]) > 100_000


def test_text_files_split_documents_on_blank_lines(tmp_path):
    (tmp_path / "a.txt").write_text("first doc line one.\nline two.\n\nsecond doc.\n")
    (tmp_path / "b.txt").write_text("third doc.\n")
    ds = C.load_corpus([str(tmp_path / "*.txt")], cache_dir=str(tmp_path / "c"))
    assert [t.strip() for t in ds["text"]] == ["first doc line one.\nline two.", "second doc.", "third doc."]


def test_sample_by_line_makes_each_line_a_document(tmp_path):
    """--sample_by line (run_mlm.py's reading of a text file, also run_mlm_sift.py's default): one
    document per line; the DeepSpeed job's default, paragraph, reads such a file as one document."""
    (tmp_path / "lines.txt").write_text("first doc.\nsecond doc.\nthird doc.\n")
    files = [str(tmp_path / "lines.txt")]
    by_line = C.load_corpus(files, cache_dir=str(tmp_path / "c"), sample_by="line")
    assert list(by_line["text"]) == ["first doc.", "second doc.", "third doc."]
    assert len(C.load_corpus(files, cache_dir=str(tmp_path / "c"))) == 1


def test_nsp_refuses_a_corpus_of_one_document(tmp_path):
    """mlm+nsp on a one-per-line file read by paragraph (one document): its NSP negatives would come
    from the same text, so it is refused, naming --sample_by."""
    (tmp_path / "lines.txt").write_text("".join(f"sentence number {i} of the text.\n" for i in range(40)))
    tok = T.train_wordpiece(["sentence number of the text"] * 10, vocab_size=100)
    one = C.load_corpus([str(tmp_path / "lines.txt")], cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="one document.*--sample_by line"):
        D.build_pretrain_data(one, tok, SEQ, "mlm+nsp", cache_dir=str(tmp_path / "c"))
    lines = C.load_corpus([str(tmp_path / "lines.txt")], cache_dir=str(tmp_path / "c"), sample_by="line")
    assert len(D.build_pretrain_data(lines, tok, SEQ, "mlm+nsp", cache_dir=str(tmp_path / "c")).train) > 0


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"doc {i}", "id": i}) for i in range(3)) + "\n")
    ds = C.load_corpus([str(path)], text_field="body", cache_dir=str(tmp_path / "c"))
    assert ds.column_names == ["text"] and list(ds["text"]) == ["doc 0", "doc 1", "doc 2"]
    with pytest.raises(ValueError, match=r"has no text field 'text' \(--text_field\); its fields are \['body', 'id'\]"):
        C.load_corpus([str(path)], cache_dir=str(tmp_path / "c"))


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(ValueError, match=r"--data .*nope\.txt: file not found"):
        C.resolve_data_files([str(tmp_path / "nope.txt")])
    with pytest.raises(ValueError, match=r"no file matches the glob"):
        C.resolve_data_files([str(tmp_path / "*.none")])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty corpus: every --data file is empty"):
        C.load_corpus([str(tmp_path / "empty.txt")])
    (tmp_path / "blank.txt").write_text("   \n\n \n")
    blank = C.load_corpus([str(tmp_path / "blank.txt")], cache_dir=str(tmp_path / "c"))
    tok = T.train_wordpiece(["some words to train on"] * 10, vocab_size=100)
    with pytest.raises(ValueError, match="empty corpus"):
        D.build_pretrain_data(blank, tok, SEQ, cache_dir=str(tmp_path / "c"))


def test_trained_vocabulary_has_canonical_ids(tok):
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    assert tokens[:5] == list(T.BERT_SPECIAL_TOKENS) and [i for _, i in vocab] == list(range(len(vocab)))
    assert tokens[5:] == sorted(tokens[5:], key=lambda t: (t.startswith("##"), t))
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 2, 3, 4)


def test_trained_tokenizer_round_trips_through_transformers(tok, tmp_path):
    from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

    tok.save_pretrained(tmp_path / "tok")
    text = "The assert statement raises AssertionError."
    want = tok(text)["input_ids"]
    for cls in (AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast):
        loaded = cls.from_pretrained(tmp_path / "tok")
        assert loaded(text)["input_ids"] == want
        assert loaded.mask_token == "[MASK]" and len(loaded) == len(tok)
    assert T.from_json(T.to_json(tok))(text)["input_ids"] == want


# ---------------------------------------------------------------------------------------- packing
def test_mlm_blocks_are_full_and_keep_the_token_stream(mlm, corpus, tok, cache):
    blocks = D.pack_mlm(D.tokenize_corpus(corpus, tok, cache), tok, SEQ, cache)
    ids = np.asarray(blocks["input_ids"])
    assert ids.shape[1] == SEQ
    assert (ids[:, 0] == tok.cls_token_id).all() and (ids[:, -1] == tok.sep_token_id).all()
    special = np.asarray(blocks["special_tokens_mask"])
    np.testing.assert_array_equal(special, np.isin(ids, [tok.cls_token_id, tok.sep_token_id]))
    assert (np.asarray(blocks["attention_mask"]) == 1).all()
    # The block bodies, in order, are the documents joined by [SEP] (the remainder dropped).
    stream = []
    for text in corpus["text"]:
        stream += tok(text, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    body = ids[:, 1:-1].reshape(-1)
    assert body.tolist() == stream[: len(body)]
    assert len(mlm.train) + len(mlm.val) == len(blocks)


def test_nsp_pairs(nsp, tok):
    ds = nsp.train
    labels = np.asarray(ds["next_sentence_label"])
    assert 0.35 < labels.mean() < 0.65  # about half random next sentences
    for row in ds.select(range(50)):
        ids, types = row["input_ids"], row["token_type_ids"]
        n = sum(row["attention_mask"])
        seps = [i for i in range(n) if ids[i] == tok.sep_token_id]
        assert ids[0] == tok.cls_token_id and len(ids) == SEQ and seps[-1] == n - 1
        a_end = seps[0]
        assert types[: a_end + 1] == [0] * (a_end + 1) and types[a_end + 1 : n] == [1] * (n - a_end - 1)
        assert all(t == tok.pad_token_id for t in ids[n:])
        assert row["special_tokens_mask"][:n] == [int(i in (0, *seps)) for i in range(n)]


def test_nsp_continuations_follow_in_the_document(nsp, corpus, tok):
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in corpus["text"]]
    joined = [" ".join(map(str, d)) for d in docs]
    checked = 0
    for row in nsp.train.select(range(40)):
        if row["next_sentence_label"] != 0:
            continue
        n = sum(row["attention_mask"])
        a_end = row["input_ids"].index(tok.sep_token_id)
        a, b = row["input_ids"][1:a_end], row["input_ids"][a_end + 1 : n - 1]
        assert any(" ".join(map(str, a + b)) in j for j in joined)
        checked += 1
    assert checked > 5


# ---------------------------------------------------------------------------------------- split
def test_validation_split_is_fixed_and_disjoint(corpus, tok, cache, mlm):
    again = D.build_pretrain_data(corpus, tok, SEQ, "mlm", val_fraction=0.05, max_val=200, seed=0, cache_dir=cache)
    assert again.val["input_ids"] == mlm.val["input_ids"] and again.train["input_ids"] == mlm.train["input_ids"]
    n = len(mlm.train) + len(mlm.val)
    assert len(mlm.val) == min(200, round(0.05 * n))
    val_idx = set(mlm.val._indices.column(0).to_pylist())
    train_idx = set(mlm.train._indices.column(0).to_pylist())
    assert not val_idx & train_idx and len(val_idx | train_idx) == n
    other = D.build_pretrain_data(corpus, tok, SEQ, "mlm", val_fraction=0.05, max_val=200, seed=1, cache_dir=cache)
    assert other.val["input_ids"] != mlm.val["input_ids"]


def test_tokenization_is_cached(corpus, tok, cache, mlm):
    files = sorted(os.listdir(os.path.join(cache, "sift_ds")))
    # The in-memory corpus's tokens go to the cache dir; the packed blocks, derived from that
    # file-backed dataset, to datasets' own cache file next to it.
    assert any(f.startswith("tokenize-") for f in files) and any(f.startswith("cache-") for f in files)
    D.build_pretrain_data(corpus, tok, SEQ, "mlm", val_fraction=0.05, max_val=200, seed=0, cache_dir=cache)
    assert sorted(os.listdir(os.path.join(cache, "sift_ds"))) == files  # reused, nothing new written


# ---------------------------------------------------------------------------------------- loader
def _loaders(ds, tok, world, batch=4, seed=3):
    collator = MaskingCollator(tok)
    return [GrossBatchLoader(ds, collator, batch, rank, world, seed) for rank in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_get_disjoint_rows_covering_each_epoch(mlm, tok, world):
    loaders = _loaders(mlm.train, tok, world)
    per_epoch = loaders[0].batches_per_epoch
    assert per_epoch == len(mlm.train) // (4 * world)
    seen = []
    for position in range(per_epoch):
        parts = [set(l.indices(0, position).tolist()) for l in loaders]
        union = set().union(*parts)
        assert sum(map(len, parts)) == len(union) == 4 * world  # disjoint across ranks
        seen.extend(union)
    assert len(seen) == len(set(seen)) == per_epoch * 4 * world  # no row twice in an epoch
    assert not np.array_equal(loaders[0].order(0), loaders[0].order(1))  # reshuffled per epoch
    np.testing.assert_array_equal(loaders[0].order(1), _loaders(mlm.train, tok, world)[0].order(1))


def test_loader_resumes_mid_epoch_with_identical_batches(mlm, tok):
    reference = _loaders(mlm.train, tok, 2)[1]
    per_epoch = reference.batches_per_epoch
    first = [reference.next_batch() for _ in range(per_epoch - 2)]  # stop 2 batches before the epoch ends
    state = reference.state_dict()
    after = [reference.next_batch() for _ in range(5)]  # crosses into epoch 1
    assert reference.epoch == 1 and state == {**state, "epoch": 0, "position": per_epoch - 2}

    resumed = _loaders(mlm.train, tok, 2)[1]
    resumed.load_state_dict(json.loads(json.dumps(state)))
    for want in after:
        got = resumed.next_batch()
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
    assert resumed.samples_seen == reference.samples_seen
    assert first[0]["input_ids"].shape == (4, SEQ)


def test_prefetching_loader_yields_exactly_the_on_demand_batches(mlm, tok):
    """The prefetch thread makes the same batches, across an epoch boundary and a mid-run
    load_state_dict (what was prefetched for the old position is dropped), and state_dict counts
    consumed batches only."""
    def loader(prefetch):
        return GrossBatchLoader(mlm.train, MaskingCollator(tok), 4, 1, 2, seed=3, prefetch=prefetch)
    plain, ahead = loader(False), loader(True)
    per_epoch = plain.batches_per_epoch
    for _ in range(per_epoch + 2):
        want, got = plain.next_batch(), ahead.next_batch()
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert ahead.state_dict() == plain.state_dict()
    assert ahead.epoch == 1 and len(ahead._ahead) == 1  # the next batch is on its way
    back = {**plain.state_dict(), "position": 1, "epoch": 0}
    plain.load_state_dict(back)
    ahead.load_state_dict(back)
    for _ in range(3):
        want, got = plain.next_batch(), ahead.next_batch()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_loader_rejects_a_different_dataset(mlm, nsp, tok):
    state = _loaders(mlm.train, tok, 1)[0].state_dict()
    with pytest.raises(ValueError, match="same corpus, tokenizer, --seq_len and --objective"):
        _loaders(nsp.train, tok, 1)[0].load_state_dict(state)


def test_too_little_data_for_one_global_batch(mlm, tok):
    with pytest.raises(ValueError, match="fewer than one global gross batch"):
        GrossBatchLoader(mlm.val.select(range(3)), MaskingCollator(tok), 4, 0, 1)


# ---------------------------------------------------------------------------------------- masking
def test_masking_statistics_15_percent_80_10_10(mlm, tok):
    collator = MaskingCollator(tok)
    columns = take(mlm.train, range(256))
    original = torch.tensor(columns["input_ids"])
    special = torch.tensor(columns["special_tokens_mask"]).bool()
    batch = collator(columns, 7, 0, 0, 0)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    labelled = batch["labels"] != -100
    assert not (labelled & special).any()
    assert torch.equal(batch["labels"][labelled], original[labelled])
    rate = labelled.sum().item() / (~special).sum().item()
    assert 0.14 < rate < 0.16
    n = labelled.sum().item()
    as_mask = (batch["input_ids"][labelled] == tok.mask_token_id).sum().item() / n
    unchanged = (batch["input_ids"][labelled] == original[labelled]).sum().item() / n
    assert 0.77 < as_mask < 0.83
    assert 0.08 < unchanged < 0.12  # 10 % kept (+ random draws of the same token, ~0)
    assert 0.08 < 1 - as_mask - unchanged < 0.12  # 10 % random tokens
    assert torch.equal(batch["input_ids"][~labelled], original[~labelled])


def test_masks_equal_the_full_collator_call(nsp, tok):
    """Masking the stacked blocks draws exactly what DataCollatorForLanguageModeling's own
    __call__ (pad, then mask) draws from the same generator."""
    from transformers import DataCollatorForLanguageModeling

    from sift_ds.seeding import derive_seed

    examples = list(nsp.train.select(range(16)))
    reference = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, return_tensors="pt")
    reference.generator = torch.Generator().manual_seed(derive_seed(3, 1, 4, 1))
    want = reference(examples)
    got = MaskingCollator(tok)(take(nsp.train, range(16)), 3, 1, 4, 1)
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_masks_are_a_function_of_the_batch_key(mlm, tok):
    collator = MaskingCollator(tok)
    examples = take(mlm.train, range(8))
    a, b = collator(examples, 1, 0, 5, 0), collator(examples, 1, 0, 5, 0)
    c = collator(examples, 1, 0, 5, 1)
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["labels"], c["labels"])
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    collator(examples, 1, 0, 6, 0)
    assert torch.equal(torch.rand(3), expected)  # the global torch RNG is untouched


def test_eval_batches_have_fixed_masks_independent_of_world_size(mlm, tok):
    collator = MaskingCollator(tok)
    single = fixed_eval_batches(mlm.val, collator, 4, 0, 1, seed=0)
    again = fixed_eval_batches(mlm.val, collator, 4, 0, 1, seed=0)
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(single, again))
    full = torch.cat([b["input_ids"] for b in single])
    assert len(full) == len(mlm.val)
    world = 3
    per_rank = [fixed_eval_batches(mlm.val, collator, 4, r, world, seed=0) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1  # same number of forward passes on every rank
    labelled = 0
    for r, batches in enumerate(per_rank):
        ids = torch.cat([b["input_ids"] for b in batches])
        labels = torch.cat([b["labels"] for b in batches])
        mine = torch.arange(r, len(mlm.val), world)
        assert torch.equal(ids[: len(mine)], full[mine])
        assert (labels[len(mine) :] == -100).all()  # filler rows carry no labels
        labelled += (labels != -100).sum().item()
    assert labelled == sum((b["labels"] != -100).sum().item() for b in single)
    # Validation masks are a stream of their own: not the masks training draws for the same rows.
    rows, first = take(mlm.val, range(4)), single[0]["labels"]
    assert torch.equal(collator(rows, 0, EVAL_STREAM, 0)["labels"], first)
    for training_key in ((0, 0, 0, 0), (0, 0, 0), (0, 1, 0, 0)):
        assert not torch.equal(collator(rows, *training_key)["labels"], first), training_key
