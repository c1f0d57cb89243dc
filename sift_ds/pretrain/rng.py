"""Every RNG a pretraining run draws from (python, numpy, torch, the accelerator's), as plain values
that a checkpoint stores per rank and a resume restores, so that dropout continues exactly."""
from __future__ import annotations

import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator


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


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every rank's RNG states, in rank order (a collective)."""
    mine = rng_state()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [mine]
    states: List[Optional[Dict[str, Any]]] = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states  # type: ignore[return-value]


def _to_bytes(t: torch.Tensor) -> bytes:
    return t.cpu().numpy().tobytes()


def _from_bytes(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8).clone()


def _accelerator():
    """DeepSpeed's accelerator when it has its own generator (CUDA, XPU, ...), else None."""
    accel = get_accelerator()
    return None if accel.device_name() == "cpu" else accel
