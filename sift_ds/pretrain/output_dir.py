"""A new run in a used output directory: refused, or started on purpose with ``--overwrite_output_dir``.

HF Trainer's convention (``run_mlm.py``), for the pretraining job. A directory *holds a run* when it
has ``run.json``, a non-empty ``metrics.jsonl`` or anything under ``checkpoints/``. A start there
without ``--resume`` is refused with one line naming ``--resume auto`` (continue that run) and
``--overwrite_output_dir``, before anything is written (``--check_only`` too).

``--overwrite_output_dir`` starts a new run there: rank 0, once it holds the output-directory lock
and before anything else is written, deletes the previous run's files (``RUN_ENTRIES`` and the
monitor directories the ds_config writes under the output directory), so that the new run's
metrics, checkpoints and TensorBoard logs are never mixed with the old one's. Other files in the
directory are left alone. A file this run reads (``--tokenizer``, ``--data``, a score file or
reference model) inside what would be deleted is refused at start-up.
"""
from __future__ import annotations

import os
import shutil
from typing import Iterable, List, Mapping, Sequence

from .checkpoint import CHECKPOINT_SUBDIR
from .identity import RUN_FILE
from .unigram import UNIGRAM_COUNTS_FILE

METRICS_FILE = "metrics.jsonl"
# what a pretraining run writes in its output directory (besides the monitor directories of its ds_config)
RUN_ENTRIES = (RUN_FILE, "run_config.json", METRICS_FILE, CHECKPOINT_SUBDIR, "final", "tokenizer",
               UNIGRAM_COUNTS_FILE, "tensorboard", "csv", "wandb", "comet")


def run_traces(output_dir: str) -> List[str]:
    """What shows that ``output_dir`` holds a run: ``run.json``, a non-empty ``metrics.jsonl``, a
    non-empty ``checkpoints/``."""
    found = []
    if os.path.isfile(os.path.join(output_dir, RUN_FILE)):
        found.append(RUN_FILE)
    metrics = os.path.join(output_dir, METRICS_FILE)
    if os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
        found.append(METRICS_FILE)
    checkpoints = os.path.join(output_dir, CHECKPOINT_SUBDIR)
    if os.path.isdir(checkpoints) and os.listdir(checkpoints):
        found.append(f"{CHECKPOINT_SUBDIR}/")
    return found


def check_new_run(output_dir: str, resume, overwrite: bool) -> None:
    """ValueError (one line) for ``--resume`` with ``--overwrite_output_dir``, and for a start with
    neither in an ``output_dir`` that holds a run."""
    if resume and overwrite:
        raise ValueError(f"--resume {resume} continues a run and --overwrite_output_dir starts a new one: give one "
                         "of them")
    found = [] if resume or overwrite else run_traces(output_dir)
    if found:
        raise ValueError(f"--output_dir {output_dir} already holds a run ({', '.join(found)}); nothing was changed: "
                         "pass --resume auto to continue it, or --overwrite_output_dir to delete its files and start "
                         "a new run there")


def entries_to_clear(output_dir: str, ds_config: Mapping) -> List[str]:
    """The existing paths ``--overwrite_output_dir`` deletes: ``RUN_ENTRIES`` and the monitor
    directories (``output_path`` of a ds_config section) inside ``output_dir``."""
    paths = [os.path.join(output_dir, name) for name in RUN_ENTRIES]
    paths += [section["output_path"] for section in ds_config.values()
              if isinstance(section, Mapping) and isinstance(section.get("output_path"), str)
              and _inside(section["output_path"], output_dir)]
    unique = list(dict.fromkeys(os.path.normpath(p) for p in paths))
    return [p for p in unique if os.path.lexists(p)]


def overwrite_entries(options, ds_config: Mapping, sift, data_files, notes: List[str]) -> List[str]:
    """What ``--overwrite_output_dir`` will delete (``entries_to_clear``), checked against what the run
    reads, and a note naming it."""
    entries = entries_to_clear(options.output_dir, ds_config)
    if entries:
        check_reads(entries, [("--tokenizer", options.tokenizer), *(("--data", f) for f in data_files or ()),
                              *sift.make_criterion().input_files().items()])
        notes.append("--overwrite_output_dir: a new run; the previous run's files are deleted at start-up: "
                     f"{', '.join(os.path.relpath(p, options.output_dir) for p in entries)} (in {options.output_dir})")
    return entries


def check_reads(entries: Sequence[str], reads: Iterable) -> None:
    """ValueError when a path this run reads ((flag, path) pairs) lies in what would be deleted."""
    for flag, path in reads:
        hit = next((e for e in entries if path and (_inside(path, e))), None)
        if hit:
            raise ValueError(f"--overwrite_output_dir would delete {hit}, which holds {flag} {path} that this run "
                             "reads: move it out of the output directory first")


def clear(entries: Sequence[str]) -> None:
    """Delete the previous run's files and directories (rank 0, holding the output-directory lock)."""
    for path in entries:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)
