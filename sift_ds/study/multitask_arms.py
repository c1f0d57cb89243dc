"""The arms of the asynchronous-convergence study: what each run trains and how its task losses are
combined.

* ``single_<task>``: a model with that task's head alone, trained on the examples it labels;
* ``uniform``: every task's label loss, summed with weight 1;
* ``uncertainty``, ``dwa``, ``pcgrad``: the loss-weighting and gradient-balancing baselines;
* ``ac_frozen``, ``ac_cached``: asynchronous convergence (every task watched on its validation
  accuracy, distilled from its best point once converged), the teacher a frozen copy or logits cached
  once over the training set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .multitask_data import TASKS

BALANCING = ("uniform", "uncertainty", "dwa", "pcgrad")


@dataclass(frozen=True)
class Arm:
    name: str
    tasks: Tuple[str, ...]
    balancing: str = "uniform"
    teacher: Optional[str] = None  # asynchronous convergence's teacher; None: no task is distilled

    @property
    def single(self) -> bool:
        return len(self.tasks) == 1


def all_arms(tasks: Sequence[str] = TASKS) -> Dict[str, Arm]:
    arms = [Arm(b, tuple(tasks), b) for b in BALANCING]
    arms += [Arm("ac_frozen", tuple(tasks), teacher="frozen"), Arm("ac_cached", tuple(tasks), teacher="cached")]
    arms += [Arm(f"single_{t}", (t,)) for t in tasks]
    return {a.name: a for a in arms}


def parse(names: str, tasks: Sequence[str] = TASKS) -> List[Arm]:
    """A comma-separated list of arm names ("single" stands for every single-task arm); an unknown
    name is refused in one line."""
    known = all_arms(tasks)
    out: List[Arm] = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        chosen = [a for a in known.values() if a.single] if name == "single" else [known.get(name)]
        if chosen == [None]:
            raise ValueError(f"--arms: unknown arm {name!r} (known: {', '.join(known)}, single)")
        out += [a for a in chosen if a not in out]
    if not out:
        raise ValueError("--arms: name at least one arm")
    return out
