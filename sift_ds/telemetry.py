"""Selection telemetry, one window for every front-end: the ``sift/*`` statistics of each selection as
``[sum, count]`` pairs (device tensors: recording them costs no host sync), summed over the
micro-steps of a logging window and over the data-parallel ranks, and read as pooled means
(``sum / count``, NaN where nothing was counted) when the front-end logs; plus the step timer (CUDA
events on the GPU, so timing adds no sync) whose marks give the timing keys.

The keys (docs/design.md has the table): ``sift/score_kept_mean``, ``sift/score_dropped_mean``,
``sift/nonfinite_scores``, ``sift/kept_fraction``, ``sift/warmup``, ``sift/keep_ratio``,
``sift/selection_time_s`` and ``sift/selection_share``. ``SelectionTelemetry.read`` gives the
window of the DeepSpeed engine (and so the pretraining job) and of the HF Trainer; Megatron receives
the pairs themselves in its loss dict (``timing_pairs`` for the timing keys) and reduces them over
its micro-batches, data-parallel ranks and log interval.
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.distributed as dist

SCORE_KEYS = ("sift/score_kept_mean", "sift/score_dropped_mean", "sift/nonfinite_scores")
TIMING_KEYS = ("sift/selection_time_s", "sift/selection_share")


def selection_stats(scores: torch.Tensor, kept: torch.Tensor, by_score: bool, keep_ratio: float) -> Dict[str, torch.Tensor]:
    """float32 ``[sum, count]`` pairs of one selection on this rank: ``scores`` [gross] (NaN when not
    scored), ``kept`` bool [gross] (which of this rank's rows are kept, by any rank)."""
    scores = scores.float()
    kept = kept.to(scores.device)
    finite = torch.isfinite(scores)

    def value(v):  # Python numbers become fills on the device, not host-to-device copies (no sync)
        return v.float().reshape(()) if torch.is_tensor(v) else scores.new_full((), float(v))

    def pair(total, count):
        return torch.stack([value(total), value(count)])

    def masked(mask):
        return pair(scores.masked_fill(~mask, 0.0).sum(), mask.sum())

    return {
        "sift/score_kept_mean": masked(kept & finite),
        "sift/score_dropped_mean": masked(~kept & finite),
        "sift/nonfinite_scores": pair((~finite).sum() if by_score else 0.0, 1),
        "sift/kept_fraction": pair(kept.sum(), kept.numel()),
        "sift/warmup": pair(0.0 if by_score else 1.0, 1),
        "sift/keep_ratio": pair(float(keep_ratio), 1),
    }


def timing_pairs(select_s: float, step_s: float, selections: int, device) -> Dict[str, torch.Tensor]:
    """The timing keys as ``[sum, count]`` pairs: seconds per selection, and the selection's share of
    the steps' wall-clock time."""
    return {"sift/selection_time_s": torch.tensor([select_s, float(selections)], device=device),
            "sift/selection_share": torch.tensor([select_s, step_s], device=device)}


def nonfinite_share(totals: Mapping[str, Sequence[float]]) -> float:
    """Of the rows scored in a window (``SelectionTelemetry.totals``), the share with a non-finite score."""
    if "sift/nonfinite_scores" not in totals:
        return 0.0
    bad = totals["sift/nonfinite_scores"][0]
    scored = bad + sum(totals[k][1] for k in ("sift/score_kept_mean", "sift/score_dropped_mean") if k in totals)
    return bad / scored if scored > 0 else 0.0


def means(totals: Mapping[str, Sequence[float]]) -> Dict[str, float]:
    return {k: (s / c if c > 0 else math.nan) for k, (s, c) in totals.items()}


class StepTimer:
    """Wall-clock marks; on CUDA, events that are only synchronised when the time is read."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def done(self, mark) -> bool:
        """Whether reading ``mark`` costs no wait (a CUDA event the device has reached)."""
        return not self.cuda or mark.query()

    def seconds(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start


class SelectionTelemetry:
    """The statistics of a window of steps: ``add`` each selection's pairs and ``add_step`` its timer
    marks (start, selections done, step done); ``read`` (or ``totals`` / ``means``) reads them; ``clear``
    starts a new window. ``state`` / ``load_state``: the window's pairs for a checkpoint taken inside it.

    For a framework that does not say where a step ends (Megatron), ``begin`` / ``selected`` mark each
    micro-step, which ends where the next one begins, and ``ready_timing_pairs`` gives the finished ones."""

    def __init__(self, device: torch.device):
        self.to(device)
        self.clear()

    def to(self, device: torch.device) -> None:
        """Time on ``device`` (a front-end that learns its device from the model)."""
        self.device, self.timer = torch.device(device), StepTimer(torch.device(device))
        self._open = None  # (start, selection done) of the micro-step under way (begin / selected)
        self._ended: List[tuple] = []  # micro-steps ended, their marks not read yet

    def clear(self) -> None:
        self.pairs: Dict[str, torch.Tensor] = {}
        self.marks: List[tuple] = []  # steps whose marks are not read yet
        self._timed = [0.0, 0.0, 0]  # seconds selecting, seconds stepping, selections of the steps read

    def add(self, pairs: Mapping[str, torch.Tensor]) -> None:
        for key, value in pairs.items():
            self.pairs[key] = self.pairs[key] + value if key in self.pairs else value.clone()

    def add_step(self, t0, t1, t2, selections: int = 1) -> None:
        """A step's marks; those the device has reached are read now (no wait), so that a window never
        read holds no more than the steps in flight."""
        self.marks.append((t0, t1, t2, selections))
        done = self._done_count(self.marks)
        self._fold(self.marks[:done])
        self.marks = self.marks[done:]

    def _done_count(self, marks: Sequence[tuple]) -> int:
        count = 0
        while count < len(marks) and self.timer.done(marks[count][2]):  # marks end in order
            count += 1
        return count

    def _fold(self, marks: Sequence[tuple]) -> None:
        for t0, t1, t2, n in marks:
            self._timed = [self._timed[0] + self.timer.seconds(t0, t1), self._timed[1] + self.timer.seconds(t0, t2),
                           self._timed[2] + n]

    def _timing(self, marks: Sequence[tuple], device) -> Dict[str, torch.Tensor]:
        select_s = sum(self.timer.seconds(t0, t1) for t0, t1, _, _ in marks)
        step_s = sum(self.timer.seconds(t0, t2) for t0, _, t2, _ in marks)
        return timing_pairs(select_s, step_s, sum(n for *_, n in marks), device)

    def totals(self, group=None, reduce: bool = False) -> Dict[str, Tuple[float, float]]:
        """Host ``(sum, count)`` of every key in the window (one read); ``reduce``: summed over the
        ranks of ``group`` (a collective: every rank calls it)."""
        if not self.pairs:
            return {}
        pairs = dict(self.pairs)
        self._fold(self.marks)
        self.marks = []
        if self._timed[2]:
            pairs.update(timing_pairs(*self._timed, next(iter(pairs.values())).device))
        keys = sorted(pairs)
        stacked = torch.stack([pairs[k].float() for k in keys])
        if reduce and dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(stacked, group=group)
        return {k: (s, c) for k, (s, c) in zip(keys, stacked.tolist())}

    def means(self, group=None, reduce: bool = False) -> Dict[str, float]:
        """The window's pooled means (``totals``' sums over counts)."""
        return means(self.totals(group, reduce))

    def read(self, group=None) -> Dict[str, float]:
        """The window's means over every rank of ``group`` (a collective), then a new window."""
        values = self.means(group, reduce=True)
        self.clear()
        return values

    def state(self) -> Dict[str, List[float]]:
        """This rank's pairs of the window so far, as host numbers (the timing keys are not kept)."""
        return {k: v.tolist() for k, v in self.pairs.items()}

    def load_state(self, state: Mapping[str, Sequence[float]]) -> None:
        """Add a ``state`` to the window (a resumed run continues the window a checkpoint cut)."""
        self.add({k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in state.items()})

    # ------------------------------------------------------------ steps that end where the next begins
    def begin(self):
        """A micro-step begins (and the previous one, if any, ends here); returns its start mark."""
        now = self.timer.now()
        if self._open is not None:
            self._ended.append((*self._open, now, 1))
        self._open = None
        return now

    def selected(self, start) -> None:
        """The selection of the micro-step that began at ``start`` is done."""
        self._open = (start, self.timer.now())

    def interrupt(self) -> None:
        """Something other than training runs next (evaluation): the open micro-step ends here."""
        if self._open is not None:
            self._ended.append((*self._open, self.timer.now(), 1))
        self._open = None

    def ready_timing_pairs(self) -> Dict[str, torch.Tensor]:
        """The timing pairs of the ended micro-steps whose marks can be read without a wait, or of the
        oldest one when none can (a wait on an earlier micro-step's mark), then forgotten; none at all
        before the first micro-step has ended."""
        if not self._ended:
            return {}
        count = max(self._done_count(self._ended), 1)
        ready, self._ended = self._ended[:count], self._ended[count:]
        return self._timing(ready, self.device)
