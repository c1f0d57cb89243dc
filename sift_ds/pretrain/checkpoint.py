"""Saving and loading the run's DeepSpeed checkpoints, crash-safely, with what an exact resume needs.

``engine.save_checkpoint`` stores the model, optimizer, LR scheduler and step counters; the run adds
one ``client_state`` entry (``RUN_STATE_KEY``): the step, samples consumed, the data loader's
position, the elapsed training time, and every rank's RNG states, gathered to one list because
DeepSpeed writes ``client_state`` from one rank only.

A save is a commit: every rank writes its files (DeepSpeed's ``latest`` is not touched), a barrier,
the files are flushed and hashed into the tag's manifest (``manifest.py``), and only then does
``latest`` name the new tag. A rank killed at any point leaves ``latest`` on the previous complete
checkpoint. A load verifies the manifest's digests before DeepSpeed unpickles anything, falls back
to the newest intact checkpoint when the newest fails them, and unpickles weights-only
(``weights_only_loads``): a checkpoint can hold tensors and plain data, never code.

Layout: ``<output_dir>/checkpoints/global_step<N>/`` (with ``sift_manifest.json``) plus ``latest``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from . import manifest as manifest_lib
from .rng import gather_rng_states, set_rng_state

logger = logging.getLogger(__name__)

RUN_STATE_KEY = "sift_ds_run"
CHECKPOINT_SUBDIR = "checkpoints"
TAG_PREFIX = "global_step"
LATEST = "latest"


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, CHECKPOINT_SUBDIR)


def list_tags(save_dir: str) -> List[str]:
    """``global_step<N>`` tag directories in ``save_dir``, oldest first."""
    if not os.path.isdir(save_dir):
        return []
    tags = [t for t in os.listdir(save_dir) if t.startswith(TAG_PREFIX) and t[len(TAG_PREFIX):].isdigit()
            and os.path.isdir(os.path.join(save_dir, t))]
    return sorted(tags, key=lambda t: int(t[len(TAG_PREFIX):]))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------------------- save
def save(engine, save_dir: str, run_state: Dict[str, Any], keep_last: Optional[int] = None,
         run: Optional[dict] = None) -> str:
    """Save on every rank (a collective) and commit: manifest, then ``latest``; returns the tag.
    ``run`` (model shape, sequence length, ...) goes into the manifest, for checks before a load.
    ``keep_last`` prunes older ``global_step*`` tags once the new one is committed."""
    tag = f"{TAG_PREFIX}{engine.global_steps}"
    tag_dir = os.path.join(save_dir, tag)
    if _rank() == 0:
        manifest_lib.remove_manifest(tag_dir)  # a tag being rewritten is incomplete until committed
    state = dict(run_state, rng=gather_rng_states())  # a collective: also orders the removal first
    engine.save_checkpoint(save_dir, tag=tag, client_state={RUN_STATE_KEY: state}, save_latest=False)
    _barrier()  # every rank's files are written
    manifest_lib.write_manifest(tag_dir, tag, engine.global_steps, run)
    _barrier()  # the manifest is durable before `latest` names the tag
    if _rank() == 0:
        manifest_lib.atomic_write(os.path.join(save_dir, LATEST), tag)
        if keep_last:
            for old in list_tags(save_dir)[:-keep_last]:
                if old != tag:
                    shutil.rmtree(os.path.join(save_dir, old), ignore_errors=True)
    _barrier()
    return tag


# ---------------------------------------------------------------------------------------- load
def _digest_problems(tag_dir: str) -> List[str]:
    """What fails the tag's sha256 manifest (a collective); [] when intact."""
    manifest = manifest_lib.read_manifest(tag_dir)
    if manifest is None:
        return [f"it has no readable {manifest_lib.MANIFEST}"]
    return manifest_lib.digest_mismatches(tag_dir, manifest)


def _listed(problem: List[str]) -> str:
    return ", ".join(problem[:3]) + (f" and {len(problem) - 3} more" if len(problem) > 3 else "")


def verify(load_dir: str, tag: str, trust: bool = False) -> None:
    """Check the tag's files against its manifest's sha256 digests (a collective) before anything
    is unpickled; ValueError naming the files unless ``trust``, which only warns."""
    tag_dir = os.path.join(load_dir, tag)
    problem = _digest_problems(tag_dir)
    if not problem:
        return
    what = f"--resume: checkpoint {tag_dir} fails its sha256 manifest ({_listed(problem)})"
    if not trust:
        raise ValueError(f"{what}; it is refused (pass --trust_checkpoint true to load it anyway)")
    if _rank() == 0:
        logger.warning("%s; loading it because of --trust_checkpoint", what)


def first_intact(load_dir: str, tags: Sequence[str], trust: bool = False) -> str:
    """The first of ``tags`` (newest first) whose files match their manifest's digests (a collective),
    warning for each one skipped; with ``trust`` the first is loaded anyway. ValueError when none is."""
    failures = []
    for tag in tags:
        tag_dir = os.path.join(load_dir, tag)
        problem = _digest_problems(tag_dir)
        if not problem:
            if failures and _rank() == 0:
                logger.warning("falling back to %s, the newest intact checkpoint", tag_dir)
            return tag
        if trust and not failures:
            verify(load_dir, tag, trust=True)
            return tag
        failures.append(f"{tag_dir} ({_listed(problem)})")
        if len(tags) > 1 and _rank() == 0:
            logger.warning("--resume: checkpoint %s fails its sha256 manifest (%s): not loaded", tag_dir,
                           _listed(problem))
    if len(failures) == 1:
        verify(load_dir, tags[0])  # raises, naming the files
    raise ValueError(f"--resume: no intact checkpoint: {'; '.join(failures)} fail their sha256 manifests "
                     "(pass --trust_checkpoint true to load the newest anyway)")


# DeepSpeed's own types in its checkpoints (the ZeRO stage, the loss scaler, fragment addresses); every
# other global in a checkpoint file is refused by torch's weights-only unpickler.
SAFE_GLOBALS = (ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address)


@contextlib.contextmanager
def weights_only_loads():
    """Every ``torch.load`` in the block (DeepSpeed's checkpoint engine passes ``weights_only=False``)
    runs torch's weights-only unpickler, which builds tensors, containers, numbers and strings, and
    the ``SAFE_GLOBALS`` classes, and refuses any other callable, so a crafted pickle cannot run code."""
    real = torch.load

    def load(f, map_location=None, *args, **kwargs):
        kwargs["weights_only"] = True
        return real(f, map_location, *args, **kwargs)

    torch.load = load
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            yield
    finally:
        torch.load = real


def load(engine, load_dir: str, tag: str) -> Dict[str, Any]:
    """Load model / optimizer / scheduler and return the run state; this rank's RNG is restored
    when the world size is unchanged (otherwise a warning, and the RNGs keep their seeded state).
    A checkpoint DeepSpeed cannot load (another model, a corrupt file) is a one-line ValueError."""
    try:
        with weights_only_loads():
            path, client_state = engine.load_checkpoint(load_dir, tag)
    except pickle.UnpicklingError as err:
        detail = str(err).split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
        unsafe = " ".join(detail.split())[:300]
        raise ValueError(f"--resume: checkpoint {os.path.join(load_dir, tag)} holds something other than tensors and "
                         f"plain data, and checkpoints are loaded weights-only: {unsafe}") from err
    except Exception as err:  # noqa: BLE001 - torch / pickle / DeepSpeed raise many kinds here
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"--resume: cannot load checkpoint {os.path.join(load_dir, tag)}: "
                         f"{type(err).__name__}: {first}") from err
    if path is None:
        raise ValueError(f"--resume: DeepSpeed found no checkpoint in {load_dir} (tag {tag})")
    state = (client_state or {}).get(RUN_STATE_KEY)
    if state is None:
        raise ValueError(f"--resume: {path} was not written by sift_ds pretraining (no {RUN_STATE_KEY!r} state)")
    world = dist.get_world_size() if dist.is_initialized() else 1
    states = state.get("rng") or []
    if len(states) == world:
        set_rng_state(states[_rank()])
    else:
        logger.warning("checkpoint was written by %d ranks, this run has a different world size: "
                       "RNG states are not restored (dropout masks will differ)", len(states))
    logger.info("resumed from %s at step %d", path, state["step"])
    return state
