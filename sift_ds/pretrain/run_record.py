"""What a run records about what it trains, in every checkpoint's manifest (``run``), and what a
resume checks against it before any work:

* ``corpus``: the corpus's content identity, the sha256 the studies use (``sift_ds.study.identity``:
  the sha256 of each ``--data`` file's sha256, in order), with each file's size and modification time
  so that a resume of unchanged files hashes nothing; the default corpus by the sha256 of its text,
  a hub dataset by its name, configuration and split. Any resume (of the same run or a fork) with
  another corpus is refused: the checkpoint's data position and validation split belong to it.
* ``training``: the ``sift`` keys that change what is trained (all but ``TRAINING_NEUTRAL``; the
  files a key names, by their content's sha256, not their path) and the options that change the
  training blocks or their masks (``SPLIT_OPTIONS``). Resuming the same run with other values is
  refused; a fork (``--resume PATH`` into another output directory, a new run) continues with a
  warning naming each change.

A checkpoint written before these records existed resumes with a warning that neither can be checked.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence

from ..config import SiftConfig
from ..config_io import canonical_keys
from ..content_digest import data_digest, file_digest
from .corpus import default_corpus
from .options import PretrainOptions
from .prepared import prepared_corpus

TRAINING_NEUTRAL = ("kernel",)  # the scorer's backend: the same scores, computed elsewhere
FILE_KEYS = ("score_file", "frequency_table", "reference")  # known by content: a moved file is the same file
SPLIT_OPTIONS = ("text_field", "sample_by", "val_fraction", "max_val_samples", "holdout_fraction", "train_on", "mlm_probability")


def _stat(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def corpus_record(options: PretrainOptions, data_files: Optional[Sequence[str]],
                  known: Optional[dict] = None) -> Dict[str, object]:
    """``{"sha256", "source", "files"}`` of the run's corpus. ``known``: a recorded one, reused
    without hashing when every file has its recorded path, size and modification time. A --prepared
    run's is its preparation's (the same as that corpus read in process)."""
    if options.prepared:
        return prepared_corpus(options.prepared)
    if options.dataset_name:
        words = [options.dataset_name, f"config={options.dataset_config}", f"split={options.dataset_split}"]
        return {"sha256": data_digest(words), "source": f"--dataset_name {' '.join(words)}", "files": []}
    if not data_files:
        text = json.dumps(list(default_corpus()["text"])).encode()
        return {"sha256": hashlib.sha256(text).hexdigest(), "source": "the default corpus (pydoc_data)", "files": []}
    stats = [_stat(p) for p in data_files]
    if known and known.get("files") == stats and isinstance(known.get("sha256"), str):
        return known
    return {"sha256": data_digest(list(data_files)), "source": "--data " + " ".join(data_files), "files": stats}


def content_digest(path: str) -> str:
    """sha256 of a file, or of a directory's files (their relative names and digests); "" for no path."""
    if not path:
        return ""
    if not os.path.exists(path):
        return f"missing: {path}"
    if os.path.isfile(path):
        return file_digest(path)
    entries = sorted(os.path.relpath(os.path.join(root, f), path) for root, _, files in os.walk(path) for f in files)
    return hashlib.sha256(json.dumps([[e, file_digest(os.path.join(path, e))] for e in entries]).encode()).hexdigest()


def training_record(options: PretrainOptions, sift: SiftConfig) -> Dict[str, object]:
    """The ``sift`` keys and options that change what is trained (files by their content's sha256)."""
    keys = {k: v for k, v in sift.to_dict(flat=True).items() if k not in TRAINING_NEUTRAL}  # the records' spelling
    keys.update({k: content_digest(keys[k]) for k in FILE_KEYS if k in keys})
    return {"sift": keys, **{name: getattr(options, name) for name in SPLIT_OPTIONS}}


def training_changes(recorded: dict, current: dict) -> List[str]:
    """``name old -> new`` for each value that differs (sift keys under their current names)."""
    changes = []
    old_sift, new_sift = canonical_keys(recorded.get("sift") or {}), current["sift"]
    for key in [k for k in new_sift if k in old_sift and old_sift[k] != new_sift[k]]:
        show = (lambda v: f"sha256 {v[:12]}" if v and not v.startswith("missing") else repr(v)) if key in FILE_KEYS \
            else repr
        changes.append(f"sift.{key} {show(old_sift[key])} -> {show(new_sift[key])}")
    changes += [f"--{name} {recorded[name]!r} -> {current[name]!r}" for name in SPLIT_OPTIONS
                if name in recorded and recorded[name] != current[name]]
    return changes


def check_resume(point_path: str, run: dict, options: PretrainOptions, sift: SiftConfig,
                 data_files: Optional[Sequence[str]], fork: bool) -> List[str]:
    """The warnings of resuming the checkpoint at ``point_path`` (its manifest's ``run`` record);
    ValueError (one line) for another corpus, or for other training settings unless ``fork``."""
    recorded_corpus, recorded_training = run.get("corpus"), run.get("training")
    warnings = []
    if isinstance(recorded_corpus, dict) and isinstance(recorded_corpus.get("sha256"), str):
        current = corpus_record(options, data_files, known=recorded_corpus)
        if current["sha256"] != recorded_corpus["sha256"]:
            raise ValueError(f"--resume {point_path}: the checkpoint was trained on another corpus: "
                             f"{recorded_corpus.get('source')} (sha256 {recorded_corpus['sha256'][:12]}), this run's is "
                             f"{current['source']} (sha256 {current['sha256'][:12]}); resume with the corpus it was "
                             "trained on, or start a new run")
    if not isinstance(recorded_training, dict):
        return warnings + [f"--resume {point_path}: the checkpoint records neither its corpus nor its training settings "
                           "(an older sift_ds wrote it): a resume with other ones cannot be detected"]
    changes = training_changes(recorded_training, training_record(options, sift))
    if changes and not fork:
        raise ValueError(f"--resume {point_path}: this run changes what the checkpoint's run trains "
                         f"({', '.join(changes)}); a run keeps them: resume with the checkpoint's values, or continue "
                         f"it as a new run in another --output_dir (--resume {point_path} there forks it)")
    if changes:
        warnings.append(f"forking {point_path} with other training settings: {', '.join(changes)}")
    return warnings
