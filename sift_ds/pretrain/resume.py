"""Which checkpoint ``--resume`` continues from, and as which run, decided before any process group.

``auto`` continues the output directory's own run (``identity.py``): the tag named by ``latest``
when it is one of the run's complete checkpoints, otherwise the run's newest complete one (with a
warning naming every incomplete one skipped), otherwise the checkpoint a fork started from; it starts
fresh when the run has none. Checkpoints of other runs in the directory are never continued by
``auto`` (a warning names them). In a directory without ``run.json`` (an older sift_ds's, or a lost
file), ``auto`` adopts the newest complete checkpoint as a new run, with a warning; when it has none
(checkpoints without manifests, or only metrics) it is refused, never wiped, unless
``--trust_checkpoint true`` adopts a checkpoint without a manifest. A PATH (a checkpoint directory, a run's output_dir, or one tag directory) continues
that checkpoint: as the same run when it is this output directory's, otherwise as a new run (a fork).

The tags older than the chosen one are its fallbacks: when the chosen one fails its sha256 digests
(``checkpoint.first_intact``), the newest intact one is loaded. Nothing here unpickles anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .checkpoint import CHECKPOINT_SUBDIR, LATEST, TAG_PREFIX, checkpoint_dir, list_tags
from .identity import RunIdentity, checkpoint_owner, read_identity
from .manifest import MANIFEST, incomplete_reason, read_manifest
from .output_dir import METRICS_FILE, check_new_run

MODEL_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size")


@dataclass(frozen=True)
class ResumePoint:
    load_dir: str  # the directory holding the tags
    tag: str
    warnings: List[str] = field(default_factory=list)  # incomplete checkpoints skipped, trust notes
    fallbacks: Tuple[str, ...] = ()  # older complete tags of the same run, newest first

    @property
    def path(self) -> str:
        return os.path.join(self.load_dir, self.tag)

    @property
    def run(self) -> dict:
        """The run facts recorded in the manifest (model shape, seq_len, run id, ...); {} without one."""
        return (read_manifest(self.path) or {}).get("run") or {}

    @property
    def owner(self) -> Optional[str]:
        return checkpoint_owner(self.path)


@dataclass(frozen=True)
class ResumeDecision:
    point: Optional[ResumePoint]  # None: a fresh start
    identity: RunIdentity  # the run this job continues, or a new one
    notes: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def is_tag(name: str) -> bool:
    return name.startswith(TAG_PREFIX) and name[len(TAG_PREFIX):].isdigit()


def read_latest(save_dir: str) -> Tuple[Optional[str], Optional[str]]:
    """(the tag ``latest`` names when it is an existing tag directory of ``save_dir``, a warning when
    it holds something else: a path, another run's directory)."""
    path = os.path.join(save_dir, LATEST)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tag = f.read().strip()
    except OSError:
        return None, None
    if tag and not is_tag(tag):
        return None, (f"{path} holds {tag[:200]!r}, not the name of a checkpoint in {save_dir} (global_step<N>): "
                      "ignored")
    return (tag if tag and os.path.isdir(os.path.join(save_dir, tag)) else None), None


def _usable(tag_dir: str, trust: bool) -> Optional[str]:
    """None when the tag can be resumed from, else why not. ``trust`` accepts a tag without any
    manifest (an older sift_ds's) as long as DeepSpeed's model file is there."""
    reason = incomplete_reason(tag_dir)
    legacy = not os.path.exists(os.path.join(tag_dir, MANIFEST))
    if reason and trust and legacy and any(f.endswith("model_states.pt") for f in os.listdir(tag_dir)):
        return None
    return reason


def choose_tag(save_dir: str, trust: bool = False, run_id: Optional[str] = None) -> Optional[ResumePoint]:
    """``latest`` when usable, else the newest usable tag; None when there is none (warnings then
    go nowhere: callers that start fresh use ``skipped_tags``). ``run_id``: only that run's tags
    (None: any run's); the fallbacks are the chosen tag's run's older usable tags."""
    tags = [t for t in list_tags(save_dir) if run_id is None or checkpoint_owner(os.path.join(save_dir, t)) == run_id]
    unowned = [t for t in list_tags(save_dir) if read_manifest(os.path.join(save_dir, t)) is None]  # e.g. being saved
    latest, latest_warning = read_latest(save_dir)
    order = ([latest] if latest in tags else []) + [t for t in reversed(tags) if t != latest]
    usable = [t for t in order if _usable(os.path.join(save_dir, t), trust) is None]
    if not usable:
        return None
    tag = usable[0]
    owner = checkpoint_owner(os.path.join(save_dir, tag))
    fallbacks = tuple(t for t in sorted(usable[1:], key=_step, reverse=True) if _step(t) < _step(tag)
                      and checkpoint_owner(os.path.join(save_dir, t)) == owner)
    warnings = [w for t, w in _skipped(save_dir, trust) if (t in tags or t in unowned) and _step(t) > _step(tag)]
    if latest_warning:
        warnings.append(latest_warning)
    if latest != tag and (latest is None or latest in tags):
        warnings.append(f"`latest` in {save_dir} does not name a complete checkpoint: resuming from {tag}, the "
                        "newest complete one")
    return ResumePoint(save_dir, tag, warnings, fallbacks)


def _skipped(save_dir: str, trust: bool) -> List[Tuple[str, str]]:
    """(tag, warning) for every tag that cannot be resumed from."""
    return [(t, f"skipped incomplete checkpoint {os.path.join(save_dir, t)}: {reason}") for t in list_tags(save_dir)
            if (reason := _usable(os.path.join(save_dir, t), trust))]


def skipped_tags(save_dir: str, trust: bool = False) -> List[str]:
    return [warning for _, warning in _skipped(save_dir, trust)]


def _step(tag: str) -> int:
    return int(tag[len(TAG_PREFIX):])


def find_resume(resume: Optional[str], output_dir: str, trust: bool = False) -> Optional[ResumePoint]:
    """The checkpoint for ``--resume`` regardless of runs: ``auto`` = the newest usable one in the
    output directory (None when there is none); a PATH = a checkpoint directory, a run's output_dir,
    or one tag directory (ValueError, one line, when it holds no usable checkpoint). ``decide``
    applies the run identity on top."""
    if not resume:
        return None
    if resume == "auto":
        return choose_tag(checkpoint_dir(output_dir), trust)
    return _find_path(resume, trust)


def _find_path(resume: str, trust: bool) -> ResumePoint:
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
            raise ValueError(f"--resume {resume}: {reason}; pass --trust_checkpoint true to load a checkpoint "
                             "without a manifest (it is loaded weights-only all the same)")
        if reason:
            raise ValueError(f"--resume {resume}: incomplete checkpoint: {reason}")
        return ResumePoint(os.path.dirname(path), os.path.basename(path))
    raise ValueError(f"--resume {resume}: not a DeepSpeed checkpoint (expected global_step<N> directories with "
                     f"{MANIFEST}, a 'latest' file, or *model_states.pt files)")


def _has_history(output_dir: str) -> bool:
    metrics = os.path.join(output_dir, METRICS_FILE)
    return bool(list_tags(checkpoint_dir(output_dir))) or (os.path.isfile(metrics) and os.path.getsize(metrics) > 0)


def _foreign_note(save_dir: str, run_id: str, point: Optional[ResumePoint]) -> List[str]:
    others = [(t, checkpoint_owner(os.path.join(save_dir, t))) for t in list_tags(save_dir)
              if not incomplete_reason(os.path.join(save_dir, t))]
    others = [(t, o) for t, o in others if o != run_id]
    if not others:
        return []
    listed = ", ".join(f"{t} (run {o or 'unknown'})" for t, o in others[-3:])
    return [f"{save_dir} holds checkpoints of other runs, not continued: {listed}; this output directory's run "
            f"is {run_id}{'' if point else ', which has no checkpoint'} (--resume PATH continues another run's "
            "checkpoint as a fork)"]


def decide(resume: Optional[str], output_dir: str, trust: bool = False, overwrite: bool = False,
           refuse_used_dir: bool = True) -> ResumeDecision:
    """The checkpoint this job continues and the run it belongs to (see the module docstring); a new run
    in a used output directory: ``output_dir.check_new_run`` (``refuse_used_dir`` False: a tool)."""
    if refuse_used_dir:
        check_new_run(output_dir, resume, overwrite)
    if not resume:
        return ResumeDecision(None, RunIdentity())
    save_dir = checkpoint_dir(output_dir)
    own = read_identity(output_dir)
    if resume != "auto":
        point = _find_path(resume, trust)
        if own is not None and point.owner == own.run_id:
            return ResumeDecision(point, own, warnings=list(point.warnings))
        note = (f"forking: --resume {resume} continues {point.path} (run {point.owner or 'unknown'}) as a new run "
                f"in {output_dir}")
        return ResumeDecision(point, RunIdentity(parent={"run_id": point.owner, "checkpoint": point.path}), [note],
                              list(point.warnings))
    if own is None:
        if not _has_history(output_dir):
            return ResumeDecision(None, RunIdentity(), [f"--resume auto: no checkpoint in {save_dir}, starting fresh"])
        point = choose_tag(save_dir, trust)
        if point is None:
            raise ValueError(
                f"--resume auto: {output_dir} holds {METRICS_FILE} or checkpoints without a manifest, but no run.json "
                "(an older sift_ds wrote them, or the files were lost), so what they continue is unknown; nothing "
                "was changed: pass --trust_checkpoint true to continue its newest checkpoint, or "
                "--overwrite_output_dir (without --resume) to delete them and start a new run there")
        warning = (f"--resume auto: {output_dir} has no run.json (written before run ids, or lost): continuing "
                   f"{point.path} as a new run")
        return ResumeDecision(point, RunIdentity(parent={"run_id": point.owner, "checkpoint": point.path}),
                              warnings=[warning] + list(point.warnings))
    point = choose_tag(save_dir, trust, run_id=own.run_id)
    warnings = _foreign_note(save_dir, own.run_id, point)
    if point is None and own.parent and own.parent.get("checkpoint"):
        parent = own.parent["checkpoint"]
        if os.path.isdir(parent) and _usable(parent, trust) is None:
            point = ResumePoint(os.path.dirname(parent), os.path.basename(parent))
            return ResumeDecision(point, own, [f"--resume auto: run {own.run_id} has no checkpoint of its own yet: "
                                               f"resuming from {parent}, the checkpoint it started from"], warnings)
    if point is None:
        warnings += [w for t, w in _skipped(save_dir, trust)
                     if checkpoint_owner(os.path.join(save_dir, t)) in (None, own.run_id)]
        return ResumeDecision(None, own, [f"--resume auto: run {own.run_id} has no complete checkpoint in {save_dir}, "
                                          "starting fresh"], warnings)
    return ResumeDecision(point, own, warnings=warnings + list(point.warnings))


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


def seed_warnings(point: ResumePoint, seed: int, data_seed: int) -> List[str]:
    """A resumed run keeps its checkpoint's data order and validation split: a different seed is a warning."""
    run = point.run
    return [f"--{name} {value} differs from the resumed checkpoint's {run[name]}: the resumed run keeps the "
            f"checkpoint's {what}, so --{name} has no effect" for name, value, what in
            (("seed", seed, "data order, masks and RNG states"), ("data_seed", data_seed, "validation split"))
            if name in run and run[name] != value]
