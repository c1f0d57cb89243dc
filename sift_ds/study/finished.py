"""A study's finished runs as curves: what ``launch/compare.py`` reports on and ``launch/readings.py``
reads again. A run is finished when its directory holds ``DONE``."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from ..pretrain.metrics import read_metrics
from . import analysis, charges, runs
from .arms import Arm

STUDY_FILE = "study.json"  # the command, seeds and arms of a study, in its --out folder


def read_study(out: str) -> Optional[dict]:
    """``study.json`` of the study in ``out``, or None when there is none."""
    path = os.path.join(out, STUDY_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def saved_arms(saved: dict) -> List[Arm]:
    """The arms a ``study.json`` names."""
    return [Arm(label, tuple(words), spec, *rest) for label, words, spec, *rest in saved["arms"]]


def run_seeds(out: str, arms: Sequence[Arm]) -> List[int]:
    """Every seed that some arm of the study in ``out`` has a run folder for (``runs/<arm>/seed<S>``)."""
    seeds = set()
    for arm in arms:
        folder = os.path.join(out, "runs", arm.label)
        names = os.listdir(folder) if os.path.isdir(folder) else []
        seeds.update(int(n[4:]) for n in names if n.startswith("seed") and n[4:].isdigit())
    return sorted(seeds)


def collect(plan: Sequence[runs.Run], charge: bool = True) -> Tuple[Dict[str, List[analysis.Curve]],
                                                                    Dict[str, List[int]], List[str],
                                                                    Dict[str, charges.OneOff]]:
    """Curves of the finished runs per arm label (each shifted by the one-off cost its run paid before
    training: a score file, a reference model), their seeds, the names of unfinished runs, and the
    mean one-off cost per charged arm."""
    curves: Dict[str, List[analysis.Curve]] = {}
    seeds: Dict[str, List[int]] = {}
    paid: Dict[str, List[charges.OneOff]] = {}
    missing = []
    for run in plan:
        if not runs.is_done(run):
            missing.append(run.name)
            continue
        try:
            curve = analysis.curve(read_metrics(run.path("metrics.jsonl")))
        except (OSError, ValueError) as err:
            raise ValueError(f"run {run.name}: unreadable metrics.jsonl ({err})") from err
        try:
            cost = charges.one_off(run.directory) if charge else charges.NONE
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"run {run.name}: its one-off cost cannot be charged ({err})") from err
        if cost != charges.NONE:
            curve = dataclasses.replace(curve, samples=curve.samples + cost.samples, elapsed=curve.elapsed + cost.seconds)
            paid.setdefault(run.label, []).append(cost)
        curves.setdefault(run.label, []).append(curve)
        seeds.setdefault(run.label, []).append(run.seed)
    charged = {label: charges.OneOff(sum(c.seconds for c in cs) / len(cs), sum(c.samples for c in cs) / len(cs),
                                     cs[0].what) for label, cs in paid.items()}
    return curves, seeds, missing, charged
