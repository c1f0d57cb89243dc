"""Which checkpoint ``--resume`` continues from, decided before any process group exists.

``auto`` and a checkpoint directory take the tag named by ``latest`` when it is complete (see
``manifest.py``); otherwise the newest complete tag, with a warning naming every incomplete one
skipped. ``auto`` starts fresh when the run has no complete checkpoint; a path that holds none is an
error. Nothing here unpickles anything: the manifest is JSON, and the digests are checked later,
collectively, by ``checkpoint.verify``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .checkpoint import CHECKPOINT_SUBDIR, LATEST, TAG_PREFIX, checkpoint_dir, list_tags
from .manifest import MANIFEST, incomplete_reason, read_manifest

MODEL_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size")


@dataclass(frozen=True)
class ResumePoint:
    load_dir: str  # the directory holding the tags
    tag: str
    warnings: List[str] = field(default_factory=list)  # incomplete checkpoints skipped, trust notes

    @property
    def path(self) -> str:
        return os.path.join(self.load_dir, self.tag)

    @property
    def run(self) -> dict:
        """The run facts recorded in the manifest (model shape, seq_len, ...); {} without one."""
        return (read_manifest(self.path) or {}).get("run") or {}


def read_latest(save_dir: str) -> Optional[str]:
    """The tag ``latest`` names when it is an existing tag directory, else None."""
    try:
        with open(os.path.join(save_dir, LATEST), encoding="utf-8") as f:
            tag = f.read().strip()
    except OSError:
        return None
    return tag if tag and os.path.isdir(os.path.join(save_dir, tag)) else None


def _usable(tag_dir: str, trust: bool) -> Optional[str]:
    """None when the tag can be resumed from, else why not. ``trust`` accepts a tag without any
    manifest (an older sift_ds's) as long as DeepSpeed's model file is there."""
    reason = incomplete_reason(tag_dir)
    legacy = not os.path.exists(os.path.join(tag_dir, MANIFEST))
    if reason and trust and legacy and any(f.endswith("model_states.pt") for f in os.listdir(tag_dir)):
        return None
    return reason


def choose_tag(save_dir: str, trust: bool = False) -> Optional[ResumePoint]:
    """``latest`` when usable, else the newest usable tag; None when there is none (warnings then
    go nowhere: callers that start fresh use ``skipped_tags``)."""
    tags = list_tags(save_dir)
    latest = read_latest(save_dir)
    order = ([latest] if latest else []) + [t for t in reversed(tags) if t != latest]
    for tag in order:
        if _usable(os.path.join(save_dir, tag), trust) is None:
            warnings = [w for t, w in _skipped(save_dir, trust) if _step(t) > _step(tag)]
            if latest != tag:
                warnings.append(f"`latest` in {save_dir} does not name a complete checkpoint: resuming from "
                                f"{tag}, the newest complete one")
            return ResumePoint(save_dir, tag, warnings)
    return None


def _skipped(save_dir: str, trust: bool) -> List[Tuple[str, str]]:
    """(tag, warning) for every tag that cannot be resumed from."""
    return [(t, f"skipped incomplete checkpoint {os.path.join(save_dir, t)}: {reason}") for t in list_tags(save_dir)
            if (reason := _usable(os.path.join(save_dir, t), trust))]


def skipped_tags(save_dir: str, trust: bool = False) -> List[str]:
    return [warning for _, warning in _skipped(save_dir, trust)]


def _step(tag: str) -> int:
    return int(tag[len(TAG_PREFIX):])


def find_resume(resume: Optional[str], output_dir: str, trust: bool = False) -> Optional[ResumePoint]:
    """The checkpoint for ``--resume``: ``auto`` = the run's own (None when it has no complete one:
    start fresh); a PATH = a checkpoint directory, a run's output_dir, or one tag directory.
    ValueError, one line, when PATH is not a usable checkpoint."""
    if not resume:
        return None
    if resume == "auto":
        return choose_tag(checkpoint_dir(output_dir), trust)
    path = os.path.abspath(os.path.expanduser(resume))
    if not os.path.isdir(path):
        raise ValueError(f"--resume {resume}: no such checkpoint directory")
    for save_dir in (path, os.path.join(path, CHECKPOINT_SUBDIR)):
        if list_tags(save_dir) or os.path.isfile(os.path.join(save_dir, LATEST)):
            point = choose_tag(save_dir, trust)
            if point is None:
                raise ValueError(f"--resume {resume}: no complete checkpoint in {save_dir} "
                                 f"({'; '.join(skipped_tags(save_dir, trust)) or 'no global_step<N> directory'})")
            return point
    if os.path.basename(path).startswith(TAG_PREFIX) and (
            os.path.isfile(os.path.join(path, MANIFEST)) or any(f.endswith("model_states.pt") for f in os.listdir(path))):
        reason = _usable(path, trust)
        if reason and not os.path.exists(os.path.join(path, MANIFEST)):
            raise ValueError(f"--resume {resume}: {reason}; checkpoints are pickles that run code when loaded: "
                             "pass --trust_checkpoint true to load one without a manifest")
        if reason:
            raise ValueError(f"--resume {resume}: incomplete checkpoint: {reason}")
        return ResumePoint(os.path.dirname(path), os.path.basename(path))
    raise ValueError(f"--resume {resume}: not a DeepSpeed checkpoint (expected global_step<N> directories with "
                     f"{MANIFEST}, a 'latest' file, or *model_states.pt files)")


def check_same_model(point: ResumePoint, model_config, seq_len: int, objective: str) -> None:
    """ValueError, before any work, when the checkpoint's recorded model or data shape differs."""
    run = point.run
    recorded = run.get("model_config") or {}
    diffs = [f"{k} {recorded[k]} vs {getattr(model_config, k, None)}" for k in MODEL_KEYS
             if k in recorded and recorded[k] != getattr(model_config, k, None)]
    diffs += [f"{k} {run[k]!r} vs {v!r}" for k, v in (("seq_len", seq_len), ("objective", objective))
              if k in run and run[k] != v]
    if diffs:
        model = f" (it was trained with --model {run['model']})" if run.get("model") else ""
        raise ValueError(f"--resume {point.path}: the checkpoint does not match this run: {', '.join(diffs)}"
                         f" (checkpoint vs this run){model}")
