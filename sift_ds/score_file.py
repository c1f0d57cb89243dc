"""The score file: per-block scores of one run's training blocks, and attaching one to those blocks.

A numpy ``.npz`` archive: one float64 array of ``num_blocks`` values per score name (index ``i`` is
training block ``i``, in the order of the job's training split), and ``meta``, a JSON string with
the format, the block count, the sha256 of the blocks' token ids and of the vocabulary, and how each
score was made (and what it cost). A run whose blocks or vocabulary differ from the file's is refused
with one line naming the file: the scores would belong to other text. So is a file that is not
whole (truncated, an array missing, a meta of another shape, a row count other than the meta's) or
that holds a non-finite score: a block without a score cannot be ranked.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from typing import Any, Dict, Mapping, Optional

import numpy as np

from .config import SiftConfig

FORMAT = "sift_ds.scores/1"


def blocks_digest(blocks) -> str:
    """sha256 of the blocks' ``input_ids`` (int64, row-major): which text, cut how, in which order."""
    ids = np.ascontiguousarray(np.asarray(blocks.with_format("numpy")["input_ids"]), dtype=np.int64)
    return hashlib.sha256(ids.tobytes()).hexdigest()


def vocab_digest(tokenizer) -> str:
    """sha256 of the vocabulary (token -> id, sorted): the same ids mean the same tokens."""
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def write_scores(path: str, scores: Mapping[str, np.ndarray], blocks, tokenizer,
                 about: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Write ``scores`` (name -> float64 [num_blocks]) for ``blocks`` to ``path``; returns the meta."""
    n = len(blocks)
    for name, values in scores.items():
        if np.shape(values) != (n,):
            raise ValueError(f"score {name!r} has shape {np.shape(values)}, expected ({n},): one value per block")
    meta = {"format": FORMAT, "num_blocks": n, "blocks_sha256": blocks_digest(blocks),
            "vocab_sha256": vocab_digest(tokenizer), "scores": {k: dict((about or {}).get(k, {})) for k in scores}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path without it
        np.savez(f, meta=np.array(json.dumps(meta)), **{k: np.asarray(v, dtype=np.float64) for k, v in scores.items()})
    return meta


META_KEYS = {"format": str, "num_blocks": int, "blocks_sha256": str, "vocab_sha256": str, "scores": dict}


def _bad(path: str, what: str) -> ValueError:
    return ValueError(f"score file {path}: {what}")


def _open(path: str):
    """(the open archive, its checked meta); a one-line ValueError naming the file when it is not a
    readable score file (missing, truncated, another archive, a meta of another shape)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise _bad(path, "no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # truncated: BadZipFile
        raise _bad(path, f"not a score file of launch/score_corpus.py: not a readable .npz archive, truncated or "
                         f"damaged? ({type(err).__name__}: {err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _bad(path, "not an .npz archive (a single array); write it with launch/score_corpus.py")
    try:
        if "meta" not in archive.files:
            raise _bad(path, f"no 'meta' array (it holds {sorted(archive.files)}): not a score file of "
                             "launch/score_corpus.py")
        try:
            meta = json.loads(str(_array(path, archive, "meta")))
        except ValueError as err:
            raise _bad(path, f"its 'meta' is not JSON ({err})") from None
        if not isinstance(meta, dict):
            raise _bad(path, f"its 'meta' is a JSON {type(meta).__name__}, not an object")
        if meta.get("format") != FORMAT:
            raise _bad(path, f"format {meta.get('format')!r}, expected {FORMAT!r}")
        for key, kind in META_KEYS.items():
            if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
                raise _bad(path, f"its meta has no {kind.__name__} {key!r} (got {meta.get(key)!r})")
    except ValueError:
        archive.close()
        raise
    return archive, meta


def _array(path: str, archive, name: str) -> np.ndarray:
    """One array of the archive; a one-line ValueError when it is missing or cannot be read (a truncated member)."""
    if name not in archive.files:
        raise _bad(path, f"its meta lists score {name!r}, but the archive has no such array (it has "
                         f"{sorted(archive.files)})")
    try:
        return archive[name]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise _bad(path, f"array {name!r} cannot be read ({type(err).__name__}: {err}); the file is damaged: write "
                         "it again with launch/score_corpus.py") from None


def read_meta(path: str) -> Dict[str, Any]:
    """The file's meta (checked as ``read_scores`` checks it)."""
    archive, meta = _open(path)
    archive.close()
    return meta


def read_scores(path: str, name: str, blocks, tokenizer) -> np.ndarray:
    """float64 [len(blocks)]: score ``name`` of ``path``, after checking that the file was made for
    exactly these blocks and this vocabulary, holds one finite value per block, and is whole (else a
    one-line ValueError naming the file and what is wrong)."""
    archive, meta = _open(path)
    with archive:
        if name not in meta["scores"]:
            raise ValueError(f"score file {path} has no score {name!r}; it has {sorted(meta['scores'])}")
        if meta["num_blocks"] != len(blocks) or meta["blocks_sha256"] != blocks_digest(blocks):
            raise ValueError(f"score file {path} was computed for other training blocks ({meta['num_blocks']} blocks, "
                             f"sha256 {meta['blocks_sha256'][:12]}; this run has {len(blocks)}): score the corpus again "
                             f"with this run's data, tokenizer, --seq_len and split options")
        if meta["vocab_sha256"] != vocab_digest(tokenizer):
            raise ValueError(f"score file {path} was computed with another vocabulary: use the tokenizer it was "
                             f"scored with (--tokenizer), or score the corpus again")
        values = _array(path, archive, name)
    if values.shape != (len(blocks),) or not np.issubdtype(values.dtype, np.number):
        raise _bad(path, f"score {name!r} has shape {values.shape} ({values.dtype}), expected ({len(blocks)},) "
                         "numbers: one per training block, as its meta says")
    values = np.asarray(values, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise _bad(path, f"score {name!r} has {bad} non-finite values (NaN or infinite) of {len(values)}; a block "
                         "without a score cannot be ranked: score the corpus again")
    return values


def attach_scores(blocks, config: SiftConfig, tokenizer):
    """The training blocks with the column the criterion reads (``sift_score`` for criterion stored,
    ``sift_reference_loss`` for reducible with a stored reference); unchanged for the other criteria."""
    stored = config.make_criterion().stored_scores()
    if stored is None:
        return blocks
    return blocks.add_column(stored.column, read_scores(stored.path, stored.name, blocks, tokenizer))
