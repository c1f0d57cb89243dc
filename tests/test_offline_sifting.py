"""Offline sifting (criterion "stored") and the reducible loss: every score against an independent
float64 reference (scipy statistics, a direct HF forward of both models), the score file's round
trip and refusals, the loader + selection core keeping exactly the blocks of the highest stored
scores, the configuration's one-line errors, and the study arms."""
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset
from scipy import stats
from transformers import BertTokenizerFast

from sift_ds import BertAdapter
from sift_ds.config import SiftConfig
from sift_ds.pretrain import reference_model  # noqa: F401 - registers the online reference loader
from sift_ds.offline.model_scores import SCORE_STREAM, block_model_scores
from sift_ds.score_file import attach_scores, read_meta, read_scores, write_scores
from sift_ds.offline.text_stats import text_tokens, unigram_entropy, unique_share
from sift_ds.criteria.columns import REFERENCE_COLUMN, SCORE_COLUMN
from sift_ds.pretrain.loader import GrossBatchLoader, MaskingCollator
from sift_ds.selection import select
from sift_ds.study.arms import parse_arm
from tiny import VOCAB, f64_row_scores, hf_reference_scores, mlm_batch, spread_weights, tiny_bert

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece(prefix: str) -> BertTokenizerFast:
    """A WordPiece tokenizer of exactly the tiny model's vocabulary size (ids 0..VOCAB-1)."""
    words = SPECIALS + [f"{prefix}{i}" for i in range(VOCAB - len(SPECIALS))]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})


@pytest.fixture
def tokenizer():
    return wordpiece("w")


def blocks_of(n=40, seq=16, seed=0):
    """``n`` blocks [CLS] ... [SEP] of random ordinary token ids, as the pretraining job packs them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIALS), VOCAB, size=(n, seq))
    ids[:, 0], ids[:, -1] = 2, 3
    special = np.zeros_like(ids)
    special[:, [0, -1]] = 1
    return Dataset.from_dict({"input_ids": ids, "token_type_ids": np.zeros_like(ids),
                              "attention_mask": np.ones_like(ids), "special_tokens_mask": special})


# ------------------------------------------------------------------ text statistics
def test_text_statistics_match_scipy_and_sets():
    rng = np.random.default_rng(1)
    for _ in range(20):
        tokens = rng.integers(0, 12, size=int(rng.integers(1, 60)))
        counts = np.array(list(Counter(tokens.tolist()).values()), dtype=np.float64)
        assert unigram_entropy(tokens) == pytest.approx(stats.entropy(counts), abs=1e-12)
        assert unique_share(tokens) == pytest.approx(len(set(tokens.tolist())) / len(tokens), abs=1e-15)
    assert unigram_entropy(np.array([7, 7, 7])) == 0.0 and unique_share(np.array([7, 7, 7])) == pytest.approx(1 / 3)
    assert unigram_entropy(np.array([], dtype=np.int64)) == 0.0 == unique_share(np.array([], dtype=np.int64))
    ids, special = np.array([2, 9, 9, 8, 3, 0]), np.array([1, 0, 0, 0, 1, 1])
    assert text_tokens(ids, special).tolist() == [9, 9, 8]  # [CLS], [SEP] and padding left out


# ------------------------------------------------------------------ the score file
def test_score_file_round_trip_and_refusals(tmp_path, tokenizer):
    blocks = blocks_of()
    scores = {"unigram_entropy": np.random.default_rng(2).random(len(blocks)), "unique_share": np.arange(40.0)}
    path = str(tmp_path / "scores.npz")
    write_scores(path, scores, blocks, tokenizer, {"unique_share": {"what": "test"}})
    for name, values in scores.items():
        assert np.array_equal(read_scores(path, name, blocks, tokenizer), values)
    assert read_meta(path)["scores"]["unique_share"] == {"what": "test"}
    other_text = blocks_of(seed=9)
    with pytest.raises(ValueError, match=f"score file {path} was computed for other training blocks"):
        read_scores(path, "unique_share", other_text, tokenizer)
    with pytest.raises(ValueError, match="other training blocks"):
        read_scores(path, "unique_share", blocks.select(range(39)), tokenizer)  # a shorter split
    with pytest.raises(ValueError, match=f"score file {path} has no score 'frozen_entropy'"):
        read_scores(path, "frozen_entropy", blocks, tokenizer)
    with pytest.raises(ValueError, match="another vocabulary"):
        read_scores(path, "unique_share", blocks, wordpiece("x"))
    (tmp_path / "junk.npz").write_bytes(b"not a score file")
    with pytest.raises(ValueError, match="junk.npz: not a score file"):
        read_scores(str(tmp_path / "junk.npz"), "unique_share", blocks, tokenizer)
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(40,\)"):
        write_scores(path, {"bad": np.zeros(3)}, blocks, tokenizer)


def test_loader_and_selection_keep_exactly_the_blocks_of_the_highest_stored_scores(tmp_path, tokenizer):
    """Per gross batch, the kept rows are the blocks with the top keep-ratio share of stored scores
    (numpy's argsort on the file's array, at the loader's block indices); the model never sees the column."""
    blocks = blocks_of(n=48)
    stored = np.random.default_rng(3).random(len(blocks))
    path = str(tmp_path / "scores.npz")
    write_scores(path, {"unique_share": stored}, blocks, tokenizer)
    cfg = SiftConfig.from_dict({"criterion": "stored", "score_file": path, "score_name": "unique_share",
                                "keep_ratio": 0.25, "scope": "local", "warmup_steps": 1})
    train = attach_scores(blocks, cfg, tokenizer)
    loader = GrossBatchLoader(train, MaskingCollator(tokenizer), batch_size=8, seed=5, prefetch=False)
    adapter = BertAdapter(tiny_bert())
    for epoch in range(2):
        for position in range(loader.batches_per_epoch):
            batch, block_ids = loader.batch_at(epoch, position), loader.indices(epoch, position)
            sel = select(adapter, cfg, batch, step=1, micro_step=0, keep=2)
            want = np.sort(np.argsort(-stored[block_ids])[:2])
            assert sel.indices.tolist() == want.tolist()
            assert SCORE_COLUMN not in sel.batch and set(sel.batch) == {"input_ids", "token_type_ids",
                                                                         "attention_mask", "labels"}
            assert torch.equal(sel.batch["input_ids"], batch["input_ids"][want])
            assert np.array_equal(sel.scores.numpy(), stored[block_ids].astype(np.float32))
    warm = select(adapter, cfg, loader.batch_at(0, 0), step=0, micro_step=0, keep=2)  # the warm-up: random rows
    assert warm.warmup and SCORE_COLUMN not in warm.batch


@pytest.mark.parametrize("exit_layer, criterion", [(1, "entropy"), (3, "loss")], ids=["frozen_entropy", "reference_loss"])
def test_model_scores_of_every_block_match_a_float64_hf_forward(tokenizer, exit_layer, criterion):
    """Mean over maskings of the exit-1 entropy (frozen_entropy) or of the whole model's loss
    (reference_loss), each masking re-made from its seed key and scored by ``output_hidden_states``
    + ``cls.predictions`` in float64."""
    blocks = blocks_of(n=10)
    model = spread_weights(tiny_bert(layers=3, seed=4), 5)
    collator = MaskingCollator(tokenizer, mlm_probability=0.3)
    got = block_model_scores(model, blocks, collator, exit_layer, criterion, masks=3, batch_size=4, seed=7)
    rows = blocks.with_format("numpy")
    want = np.zeros(len(blocks))
    count = np.zeros(len(blocks))
    for chunk, start in enumerate(range(0, len(blocks), 4)):
        for m in range(3):
            batch = collator(rows[start : start + 4], 7, SCORE_STREAM, chunk, m)
            ref = hf_reference_scores(model, batch, exit_layer, criterion).numpy()
            finite = np.isfinite(ref)
            want[start : start + len(ref)] += np.where(finite, ref, 0)
            count[start : start + len(ref)] += finite
    assert count.min() > 0
    np.testing.assert_allclose(got, want / count, rtol=0, atol=2e-5)


# ------------------------------------------------------------------ the reducible loss
def f64_zscore(x):
    finite = np.isfinite(x)
    out = np.full_like(x, -np.inf)
    out[finite] = stats.zscore(x[finite], ddof=0)
    return out


def hf_full_loss(model, batch):
    """float64 per-row masked-LM loss of the whole model, from its own logits."""
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).logits
    return f64_row_scores(logits, batch["labels"], batch["labels"] != -100, "loss").numpy()


@pytest.mark.parametrize("reference_kind", ["online", "stored"])
def test_reducible_scores_are_the_difference_of_z_scored_losses(tmp_path, reference_kind):
    model = spread_weights(tiny_bert(layers=3, seed=1), 2)
    reference = spread_weights(tiny_bert(layers=2, seed=3), 4)
    batch = mlm_batch(12, seq=16, seed=6)  # one row without a labelled token
    ref_loss = hf_full_loss(reference, batch)
    if reference_kind == "online":
        reference.save_pretrained(tmp_path / "reference")
        target = str(tmp_path / "reference")
    else:
        # The job attaches the file's reference_loss as this column (test_offline_runs.py); here it is given directly.
        (tmp_path / "scores.npz").write_bytes(b"")
        target = str(tmp_path / "scores.npz")
        batch[REFERENCE_COLUMN] = torch.tensor(ref_loss)
    cfg = SiftConfig.from_dict({"criterion": "reducible", "reference": target, "exit_layer": 1, "scope": "local",
                                "selection_start_step": 0})  # select() is below the front-ends' "auto" resolution
    sel = select(BertAdapter(model), cfg, batch, step=0, micro_step=0, keep=4)
    exit_loss = hf_reference_scores(model, batch, 1, "loss").numpy()
    z_exit, z_ref = f64_zscore(exit_loss), f64_zscore(ref_loss)
    both = np.isfinite(z_exit) & np.isfinite(z_ref)
    want = np.where(both, z_exit - np.where(both, z_ref, 0), -np.inf)
    got = sel.scores.double().numpy()
    assert 1 <= np.isneginf(want).sum() <= 3 and np.array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=1e-4)
    assert sel.indices.tolist() == sorted(np.argsort(-want)[:4].tolist())
    assert REFERENCE_COLUMN not in sel.batch


@pytest.mark.parametrize("section, message", [
    ({"criterion": "stored"}, "sift.stored.score_file is required by sift.criterion='stored'"),
    ({"criterion": "stored", "score_file": "/no/such.npz", "score_name": "x"},
     "sift.stored.score_file: no such file or directory: /no/such.npz"),
    ({"criterion": "reducible"}, "sift.reducible.reference is required by sift.criterion='reducible'"),
    ({"criterion": "entropy", "reference": "x"},
     "sift.reducible.reference='x' is only read by sift.criterion='reducible', not 'entropy'"),
    ({"score_name": "x"}, "sift.stored.score_name='x' is only read by sift.criterion='stored', not 'entropy'"),
    ({"criterion": "bogus"}, "sift.criterion must be one of"),
])
def test_criterion_inputs_are_checked_at_start_up(section, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        SiftConfig.from_dict(section)
    assert len(str(err.value).splitlines()) == 1


# ------------------------------------------------------------------ study arms
def test_offline_and_reducible_arms():
    arm = parse_arm("stored:unigram_entropy@score_file=runs/scores/linux.npz@anneal_end_step=0")
    assert arm.overrides == ("--sift_enabled", "true", "--sift_criterion", "stored", "--sift_score_name",
                             "unigram_entropy", "--sift_score_file", "runs/scores/linux.npz",
                             "--sift_anneal_end_step", "0")
    assert arm.label == "stored-unigram_entropy_score_file-linux_anneal_end_step-0"
    arm = parse_arm("reducible:1@reference=runs/reference/final")
    assert arm.overrides[-2:] == ("--sift_reference", "runs/reference/final")
    assert arm.label == "reducible-exit1_reference-reference"
    with pytest.raises(ValueError, match="key 'score_name' is set twice"):
        parse_arm("stored:unique_share@score_name=x")
    with pytest.raises(ValueError, match="expected stored:SCORE_NAME"):
        parse_arm("stored:")
