"""Files and data known by their content: a file's sha256 (cached per path, size and mtime within
the process), and one sha256 for a run's ``--data`` words, the same wherever the files lie. Runs,
prepared directories and studies record these to tell the same corpus from another."""
from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Dict, List, Sequence

_DIGESTS: Dict[tuple, str] = {}


def file_digest(path: str) -> str:
    """sha256 of a file's bytes, cached per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def data_digest(words: Sequence[str]) -> str:
    """One sha256 for the study's ``--data`` words: each word's files (a glob, sorted) by content; a
    word that names no file (a dataset name) by itself. Where the files lie does not count."""
    items: List[object] = []
    for word in words:
        files = sorted(p for p in glob.glob(word) if os.path.isfile(p))
        items.append([file_digest(p) for p in files] if files else word)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()
