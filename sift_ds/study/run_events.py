"""Two readings of a study's raw records (``metrics.jsonl``) that its report does not make:

* ``departure``: the evaluation step from which one seed's validation loss stays more than a margin
  below every other seed's at the same step, to the end of the run (a sudden drop of one seed), and
  the learning rate there;
* ``alone_gain``: how much faster (tokens/s) a run trained once the other runs of its batch had
  finished and it had the machine to itself, against before.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple


def val_losses(records: Sequence[Mapping]) -> Dict[int, float]:
    """Step -> validation loss of the evaluated records."""
    return {int(r["step"]): float(r["val_loss"]) for r in records if r.get("val_loss") is not None}


def departure(own: Mapping[int, float], others: Sequence[Mapping[int, float]], margin: float) -> Optional[int]:
    """The first step (of those every curve evaluated) from which ``own`` stays more than ``margin``
    below each of ``others`` to the last common step; None when it ends within the margin."""
    steps = sorted(set(own).intersection(*others))
    below = [min(o[s] for o in others) - own[s] > margin for s in steps]
    if not below or not below[-1]:
        return None
    first = len(below)
    while first > 0 and below[first - 1]:
        first -= 1
    return steps[first]


def lr_at(records: Sequence[Mapping], step: int) -> Optional[float]:
    """The learning rate logged at ``step`` (None if no record has it)."""
    return next((float(r["lr"]) for r in records if int(r["step"]) == step and r.get("lr") is not None), None)


def alone_gain(records: Sequence[Mapping], others_end: float) -> Optional[Tuple[float, int]]:
    """(mean tokens/s of the log windows after ``others_end`` over the mean of those before, windows
    after) for records with ``time`` and ``tokens_per_s``; the window that spans ``others_end`` counts
    on neither side. None when either side is empty."""
    before: List[float] = []
    after: List[float] = []
    previous = None
    for r in records:
        if r.get("tokens_per_s") is None or r.get("time") is None:
            continue
        t = float(r["time"])
        if t <= others_end:
            before.append(float(r["tokens_per_s"]))
        elif previous is not None and previous >= others_end:
            after.append(float(r["tokens_per_s"]))
        previous = t
    if not before or not after:
        return None
    return (sum(after) / len(after)) / (sum(before) / len(before)), len(after)


def events_markdown(records: Mapping[Tuple[str, int], Sequence[Mapping]], vanilla: Sequence[str],
                    margin: float) -> str:
    """Two tables from the finished runs' records, keyed (arm label, seed): each vanilla run's
    departure from the other seeds of its arm (``departure``, with the learning rate there), and
    each seed's last run's ``alone_gain`` against the end of the other runs of that seed."""
    lines = [f"| vanilla arm | seed | departs from the other seeds (val_loss more than {margin} below) | lr there |",
             "|---|---|---|---|"]
    for label in vanilla:
        seeds = sorted(s for (arm, s) in records if arm == label)
        for s in seeds:
            others = [val_losses(records[(label, o)]) for o in seeds if o != s]
            step = departure(val_losses(records[(label, s)]), others, margin) if others else None
            lr = lr_at(records[(label, s)], step) if step is not None else None
            lines.append(f"| {label} | {s} | {'—' if step is None else f'step {step}'} | "
                         f"{'—' if lr is None else f'{lr:.3g}'} |")
    lines += ["", "| seed | last run to finish | tokens/s alone over tokens/s beside the others | windows alone |",
              "|---|---|---|---|"]
    for s in sorted({seed for _, seed in records}):
        ends = {label: float(rs[-1]["time"]) for (label, seed), rs in records.items() if seed == s and rs}
        if len(ends) < 2:
            continue
        last = max(ends, key=ends.get)
        gain = alone_gain(records[(last, s)], max(t for label, t in ends.items() if label != last))
        lines.append(f"| {s} | {last} | {'—' if gain is None else f'{gain[0]:.3f}'} | "
                     f"{'—' if gain is None else gain[1]} |")
    return "\n".join(lines) + "\n"
