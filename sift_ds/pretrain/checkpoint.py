"""DeepSpeed checkpoints of a pretraining run, with what an exact resume needs in ``client_state``.

``engine.save_checkpoint`` stores the model, optimizer, LR scheduler and step counters; the run adds
one ``client_state`` entry (``RUN_STATE_KEY``): the step, samples consumed, the data loader's
position, the elapsed training time, and every rank's RNG states (python, numpy, torch, accelerator),
gathered to one list because DeepSpeed writes ``client_state`` from one rank only.

Layout: ``<output_dir>/checkpoints/global_step<N>/`` plus DeepSpeed's ``latest`` file.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

logger = logging.getLogger(__name__)

RUN_STATE_KEY = "sift_ds_run"
CHECKPOINT_SUBDIR = "checkpoints"
TAG_PREFIX = "global_step"


# ---------------------------------------------------------------------------------------- RNG
def rng_state() -> Dict[str, Any]:
    """This process's RNG states as plain Python values (bytes, ints), which pickle anywhere."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, key.tolist(), pos, has_gauss, cached),
        "torch": _to_bytes(torch.get_rng_state()),
    }
    accel = _accelerator()
    if accel is not None:
        state["accelerator"] = _to_bytes(accel.get_rng_state())
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_from_bytes(state["torch"]))
    accel = _accelerator()
    if accel is not None and "accelerator" in state:
        accel.set_rng_state(_from_bytes(state["accelerator"]))


def _to_bytes(t: torch.Tensor) -> bytes:
    return t.cpu().numpy().tobytes()


def _from_bytes(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8).clone()


def _accelerator():
    """DeepSpeed's accelerator when it has its own generator (CUDA, XPU, ...), else None."""
    accel = get_accelerator()
    return None if accel.device_name() == "cpu" else accel


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every rank's RNG states, in rank order (a collective)."""
    mine = rng_state()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [mine]
    states: List[Optional[Dict[str, Any]]] = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- save / load
def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, CHECKPOINT_SUBDIR)


def save(engine, save_dir: str, run_state: Dict[str, Any], keep_last: Optional[int] = None) -> str:
    """Save on every rank (DeepSpeed's save is collective); returns the tag. ``keep_last`` prunes
    older ``global_step*`` tags (rank 0, after all ranks have written)."""
    tag = f"{TAG_PREFIX}{engine.global_steps}"
    state = dict(run_state, rng=gather_rng_states())
    engine.save_checkpoint(save_dir, tag=tag, client_state={RUN_STATE_KEY: state})
    if keep_last:
        if dist.is_initialized():
            dist.barrier()
        if not dist.is_initialized() or dist.get_rank() == 0:
            for old in list_tags(save_dir)[:-keep_last]:
                shutil.rmtree(os.path.join(save_dir, old), ignore_errors=True)
    return tag


def list_tags(save_dir: str) -> List[str]:
    """``global_step<N>`` tags in ``save_dir``, oldest first."""
    if not os.path.isdir(save_dir):
        return []
    tags = [t for t in os.listdir(save_dir) if t.startswith(TAG_PREFIX) and t[len(TAG_PREFIX):].isdigit()]
    return sorted(tags, key=lambda t: int(t[len(TAG_PREFIX):]))


def find_resume(resume: Optional[str], output_dir: str) -> Optional[Tuple[str, Optional[str]]]:
    """``(load_dir, tag)`` for ``--resume``: ``auto`` = the run's own ``latest`` (None when the run
    has no checkpoint yet: start fresh); a PATH = a checkpoint directory holding ``latest``, or one
    tag directory inside it. ValueError when PATH is not a checkpoint."""
    if not resume:
        return None
    if resume == "auto":
        save_dir = checkpoint_dir(output_dir)
        return (save_dir, None) if os.path.isfile(os.path.join(save_dir, "latest")) else None
    path = os.path.abspath(os.path.expanduser(resume))
    if not os.path.exists(path):
        raise ValueError(f"--resume {resume}: no such checkpoint directory")
    if os.path.isfile(os.path.join(path, "latest")):
        return path, None
    if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)) and os.path.isfile(
            os.path.join(path, CHECKPOINT_SUBDIR, "latest")):
        return os.path.join(path, CHECKPOINT_SUBDIR), None  # a run's output_dir
    if os.path.isdir(path) and any(f.endswith("model_states.pt") for f in os.listdir(path)):
        return os.path.dirname(path), os.path.basename(path)  # one tag directory
    raise ValueError(
        f"--resume {resume}: not a DeepSpeed checkpoint (expected a 'latest' file or *model_states.pt files)"
    )


def load(engine, load_dir: str, tag: Optional[str] = None) -> Dict[str, Any]:
    """Load model / optimizer / scheduler and return the run state; this rank's RNG is restored
    when the world size is unchanged (otherwise a warning, and the RNGs keep their seeded state)."""
    path, client_state = engine.load_checkpoint(load_dir, tag)
    if path is None:
        raise ValueError(f"--resume: DeepSpeed found no checkpoint in {load_dir} (tag {tag or 'latest'})")
    state = (client_state or {}).get(RUN_STATE_KEY)
    if state is None:
        raise ValueError(f"--resume: {path} was not written by sift_ds pretraining (no {RUN_STATE_KEY!r} state)")
    rank = dist.get_rank() if dist.is_initialized() else 0
    states = state.get("rng") or []
    if len(states) == (dist.get_world_size() if dist.is_initialized() else 1):
        set_rng_state(states[rank])
    else:
        logger.warning("checkpoint was written by %d ranks, this run has a different world size: "
                       "RNG states are not restored (dropout masks will differ)", len(states))
    logger.info("resumed from %s at step %d", path, state["step"])
    return state
