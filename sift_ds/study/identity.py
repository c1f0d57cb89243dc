"""What a study's runs are, independent of the machine: the data known by its content (a sha256),
the ds_config by its content, the study directory as ``<out>``; and the rewriting of a finished
study's files (``command.json``, ``run_config.json``, ``log.txt``, ``study.json``) into that form, so
that a committed study holds no path of the machine that ran it and can be resumed elsewhere."""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterable, Sequence

from ..config import canonical_section
from ..content_digest import data_digest

# An absolute path of a machine (the tests scan committed files for these prefixes).
MACHINE_PATH = re.compile(r"/(?:work|root|home|tmp)/[^\s'\",\]\)`]*")


def config_digest(path: str) -> str:
    """sha256 of a ds_config's meaning: notes (keys starting with ``_``, at any depth) left out, old
    ``sift`` key names and spellings replaced by the current ones (``sift_ds.config.canonical_section``),
    ``sift.start_after_lr_peak`` left out (it permits a start, it changes nothing trained), keys sorted. A
    config edited only in those ways is the same config to a study."""
    with open(path, encoding="utf-8") as f:
        config = _without_notes(json.load(f))
    if isinstance(config, dict) and isinstance(config.get("sift"), dict):
        sift = canonical_section(config["sift"])
        sift.pop("start_after_lr_peak", None)
        config["sift"] = sift
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _without_notes(value):
    if isinstance(value, dict):
        return {k: _without_notes(v) for k, v in value.items() if not (isinstance(k, str) and k.startswith("_"))}
    return [_without_notes(v) for v in value] if isinstance(value, list) else value


def portable(stamp: dict) -> dict:
    """A ``command.json`` record that survives moving the study: the study directory (where it was
    when the record was written) becomes ``<out>``; the ds_config and the data are known by their
    content (their sha256), not their paths."""
    words = list(stamp.get("args", []))
    run_dir = words[words.index("--output_dir") + 1] if "--output_dir" in words[:-1] else ""
    root = os.path.dirname(os.path.dirname(os.path.dirname(run_dir))) or "\0"  # OUT of OUT/runs/<label>/seed<S>
    for i, word in enumerate(words):
        if i and words[i - 1] == "--ds_config":
            words[i] = "<ds_config>" if stamp.get("ds_config_sha256") else word
        elif i and words[i - 1] == "--data" and stamp.get("data_sha256"):
            words[i] = "<data>"
        elif word == root or word.startswith(root + os.sep):
            words[i] = "<out>" + word[len(root):]
    return dict(stamp, args=words)


def relocate(text: str, out: str, checkout: str, data: Iterable[str]) -> str:
    """``text`` with every machine path rewritten: the data files become ``<data>``, paths in the study
    directory ``<out>/...``, paths in any checkout of this repository (from the first component that
    is a top-level entry of ``checkout``: docs, ds_configs, .venv, ...) relative to it, anything else
    ``<path>``."""
    top = set(os.listdir(checkout))
    data = {os.path.normpath(d) for d in data}
    out = os.path.normpath(out)

    def one(match: re.Match) -> str:
        path = match.group(0)
        bare = os.path.normpath(path.rstrip(".:;"))
        tail = path[len(path.rstrip(".:;")):]
        if bare in data:
            return "<data>" + tail
        if bare == out or bare.startswith(out + os.sep):
            return "<out>" + bare[len(out):] + tail
        parts = bare.strip("/").split("/")
        for i, part in enumerate(parts):
            if part in top:
                return "/".join(parts[i:]) + tail
        return "<path>" + tail
    return MACHINE_PATH.sub(one, text)


def make_portable(out: str, checkout: str, data: Sequence[str], run_dirs: Iterable[str]) -> None:
    """Rewrite the given (finished) runs' files in place; ``command.json`` gains ``data_sha256``."""
    for run_dir in run_dirs:
        stamp_path = os.path.join(run_dir, "command.json")
        if os.path.exists(stamp_path):
            with open(stamp_path, encoding="utf-8") as f:
                stamp = json.load(f)
            if "--data" in stamp["args"] and "data_sha256" not in stamp:
                stamp["data_sha256"] = data_digest(data)
            stamp = portable(stamp)
            with open(stamp_path, "w", encoding="utf-8") as f:
                json.dump(stamp, f, indent=1)
        for name in ("run_config.json", "log.txt"):
            path = os.path.join(run_dir, name)
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
                    text = f.read()
                with open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
                    f.write(relocate(text, out, checkout, data))
