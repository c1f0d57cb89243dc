"""Run identity: which run an output directory, a checkpoint and a metrics record belong to.

A fresh start draws a run id and writes it to ``<output_dir>/run.json``; every checkpoint manifest
(``run.run_id``) and every ``metrics.jsonl`` record carries it. ``--resume auto`` continues only
checkpoints of the output directory's own run; continuing another run's checkpoint (``--resume
PATH``) starts a new run, a *fork*, whose ``run.json`` names the checkpoint it started from (its
``parent``), so that a fork killed before its first save resumes from that checkpoint again.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from .manifest import atomic_write, read_manifest

RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunIdentity:
    """``run_id`` None: a new run, whose id rank 0 draws at start-up. ``parent``: the checkpoint a
    fork (or an adopted legacy directory) starts from, ``{"run_id": ..., "checkpoint": path}``."""

    run_id: Optional[str] = None
    parent: Optional[dict] = None

    @property
    def new(self) -> bool:
        return self.run_id is None


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def read_identity(output_dir: str) -> Optional[RunIdentity]:
    """The output directory's run (``run.json``), None when it has none; ValueError naming the file
    when it is unreadable (it is written atomically, so only a foreign hand can break it)."""
    path = os.path.join(output_dir, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is unreadable ({err}); delete it only if you know which run this "
                         "directory holds") from None
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str) or not record["run_id"]:
        raise ValueError(f"{path} does not hold a run id (a JSON object with a 'run_id' string)")
    parent = record.get("parent")
    return RunIdentity(record["run_id"], parent if isinstance(parent, dict) else None)


def write_identity(output_dir: str, identity: RunIdentity) -> None:
    record = {"run_id": identity.run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parent": identity.parent}
    atomic_write(os.path.join(output_dir, RUN_FILE), json.dumps(record, indent=1))


def checkpoint_owner(tag_dir: str) -> Optional[str]:
    """The run id in a checkpoint's manifest; None without one (a legacy or incomplete checkpoint)."""
    manifest = read_manifest(tag_dir) or {}
    run = manifest.get("run") if isinstance(manifest.get("run"), dict) else {}
    owner = run.get("run_id")
    return owner if isinstance(owner, str) else None
