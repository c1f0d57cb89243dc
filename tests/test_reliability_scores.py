"""Score files that are not whole or hold non-finite scores are refused when they are loaded, with
one line naming the file and what is wrong (before, a truncated file raised BadZipFile, a missing
array KeyError, a meta of another shape AttributeError, a wrong row count failed in ``datasets``
without naming the file, and NaN / inf scores trained silently)."""
import json

import numpy as np
import pytest

from sift_ds.score_file import FORMAT, blocks_digest, read_meta, read_scores, vocab_digest, write_scores
from test_offline_sifting import blocks_of, wordpiece


@pytest.fixture(scope="module")
def made():
    blocks, tokenizer = blocks_of(), wordpiece("w")
    meta = {"format": FORMAT, "num_blocks": len(blocks), "blocks_sha256": blocks_digest(blocks),
            "vocab_sha256": vocab_digest(tokenizer), "scores": {"s": {}}}
    return blocks, tokenizer, meta


def crafted(path, meta, **arrays):
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return str(path)


def refusal(path, made, name="s") -> str:
    blocks, tokenizer, _ = made
    with pytest.raises(ValueError) as err:
        read_scores(path, name, blocks, tokenizer)
    line = str(err.value)
    assert line.startswith(f"score file {path}") and "\n" not in line, line
    return line


def test_a_truncated_file_is_one_line(tmp_path, made):
    blocks, tokenizer, _ = made
    path = tmp_path / "scores.npz"
    write_scores(str(path), {"s": np.arange(40.0)}, blocks, tokenizer)
    whole = path.read_bytes()
    for cut in (len(whole) // 2, len(whole) - 30):  # the central directory gone; the last bytes gone
        path.write_bytes(whole[:cut])
        assert "not a readable .npz archive, truncated or damaged?" in refusal(str(path), made)


def test_a_missing_array_or_a_meta_of_another_shape_is_one_line(tmp_path, made):
    _, _, meta = made
    n = meta["num_blocks"]
    assert "the archive has no such array" in refusal(crafted(tmp_path / "a.npz", meta), made)
    assert "its 'meta' is a JSON list" in refusal(crafted(tmp_path / "b.npz", [meta], s=np.zeros(n)), made)
    assert "its meta has no int 'num_blocks'" in refusal(
        crafted(tmp_path / "c.npz", {k: v for k, v in meta.items() if k != "num_blocks"}, s=np.zeros(n)), made)
    assert "its meta has no dict 'scores'" in refusal(crafted(tmp_path / "d.npz", dict(meta, scores=["s"]),
                                                              s=np.zeros(n)), made)
    no_meta = tmp_path / "e.npz"
    with open(no_meta, "wb") as f:
        np.savez(f, s=np.zeros(n))
    assert "no 'meta' array" in refusal(str(no_meta), made)
    raw = tmp_path / "f.npz"
    with open(raw, "wb") as f:
        np.savez(f, meta=np.array("{not json"), s=np.zeros(n))
    with pytest.raises(ValueError, match=f"score file {raw}: its 'meta' is not JSON"):
        read_meta(str(raw))


def test_a_wrong_row_count_names_the_file(tmp_path, made):
    _, _, meta = made
    n = meta["num_blocks"]
    line = refusal(crafted(tmp_path / "rows.npz", meta, s=np.zeros(n - 1)), made)
    assert f"score 's' has shape ({n - 1},)" in line and f"expected ({n},)" in line


@pytest.mark.parametrize("bad", ["all_nan", "one_inf"])
def test_non_finite_stored_scores_are_refused_with_their_count(tmp_path, made, bad):
    _, _, meta = made
    n = meta["num_blocks"]
    values = np.full(n, np.nan) if bad == "all_nan" else np.where(np.arange(n) == 7, np.inf, np.arange(n, dtype=float))
    line = refusal(crafted(tmp_path / "nf.npz", meta, s=values), made)
    assert f"score 's' has {n if bad == 'all_nan' else 1} non-finite values (NaN or infinite) of {n}" in line
