"""The files of a prepared directory and how they are written: ``settings.json`` (what is prepared,
written first), ``shard-NNNNN.<column>.npy`` and ``shard-NNNNN.json`` (a shard's record, written
after its columns), ``manifest.json`` (written last: the directory is finished), ``tokenizer/``.

Every file is written to a temporary name and renamed, so a killed preparation leaves whole files
or temporary ones, never a half-written file under a final name.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from typing import Any, Dict, Optional

import numpy as np

FORMAT = "sift_ds.prepared/1"
SETTINGS, MANIFEST, TOKENIZER_DIR = "settings.json", "manifest.json", "tokenizer"
TMP = ".tmp"
VERSIONED = ("sift_ds", "numpy", "tokenizers", "transformers", "datasets")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def column_file(shard: str, column: str) -> str:
    return f"{shard}.{column}.npy"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id (uint16 for BERT's 30,522)."""
    for dtype in (np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def atomic_json(path: str, record: Dict[str, Any]) -> None:
    tmp = path + TMP
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_npy(path: str, array: np.ndarray) -> Dict[str, Any]:
    """Write ``array`` as ``.npy`` through a temporary file; its size and sha256 (of the file)."""
    tmp = path + TMP
    with open(tmp, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"size": os.path.getsize(path), "sha256": file_sha256(path)}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str, what: str) -> Optional[Dict[str, Any]]:
    """The JSON object in ``path``; None when there is none; ValueError (naming ``what``) when unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{what} {path} is unreadable ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{what} {path} is not a JSON object")
    return record


def tokenizer_digest(tokenizer) -> str:
    """sha256 of the tokenizer's definition (vocabulary, normalizer, pre-tokenizer, post-processor),
    without its padding and truncation settings, which do not change the ids; the same for a
    tokenizer and its saved and reloaded copy."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    normalizer = spec.get("normalizer") or {}
    if normalizer.get("type") == "BertNormalizer" and normalizer.get("strip_accents") is None:
        normalizer["strip_accents"] = normalizer.get("lowercase")  # None means: as lowercase (how it saves)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def versions() -> Dict[str, str]:
    """The versions of the code that writes the blocks."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout
            found[name] = "unknown"
    return found
