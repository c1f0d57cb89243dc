"""Checks of a study before its first run: the passthrough words, the pinned cores, each arm's
flags and full plan (validated by the job itself), and that a run directory holds no run started
with other settings (compared in a form that survives moving the study)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Sequence

from ..content_digest import file_digest
from .arms import Arm, flags
from .identity import portable
from .runs import RESERVED, Run, RunFailed, Settings, environment, is_done, job_args, record

def check_passthrough(arms: Sequence[Arm], passthrough: Sequence[str]) -> None:
    """The passthrough may not set what the study sets per run (seed, output, resume, arm flags)."""
    given = set(flags(passthrough))
    # --max_steps after '--' is the study's budget; an arm's own @max_steps replaces it for that arm.
    clash = sorted(given & (set(RESERVED) | {f for a in arms for f in flags(a.overrides)} - {"--max_steps"}))
    if clash:
        raise ValueError(f"the words after '--' set {', '.join(clash)}, which compare.py sets per run")


def check_pinning(s: Settings) -> None:
    """ValueError unless ``pin_cores`` gives every concurrent run's ranks a core of their own, among
    the cores this process may use."""
    if not s.pin_cores:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("--pin_cores: this OS has no sched_setaffinity")
    allowed = os.sched_getaffinity(0)
    bad = sorted(set(s.pin_cores) - allowed)
    if bad:
        raise ValueError(f"--pin_cores: core(s) {bad} are not available to this process (allowed: {sorted(allowed)})")
    if len(set(s.pin_cores)) != len(s.pin_cores):
        raise ValueError(f"--pin_cores: a core is listed twice: {list(s.pin_cores)}")
    need = s.parallel * s.num_gpus
    if len(s.pin_cores) < need:
        raise ValueError(f"--pin_cores gives {len(s.pin_cores)} core(s); --parallel {s.parallel} x --num_gpus "
                         f"{s.num_gpus} needs {need} (one per rank)")


def check_flags(s: Settings, arms: Sequence[Arm], runs: Sequence[Run] = ()) -> None:
    """Before hours of runs: every flag of every arm exists in the job's --help, and a value with
    listed choices is one of them (so a typo in the last arm fails now, not after the first arms);
    then, when the job has ``--check_only``, each arm's full plan (its first unfinished run's
    arguments: ds_config, model, SIFT settings against the model's depth, ...) is validated by the
    job itself, in seconds and without training. ValueError for a bad arm, RunFailed when the job
    cannot even show its help."""
    proc = subprocess.run([sys.executable, s.script, "--help"], capture_output=True, text=True,
                          env=environment(s), timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RunFailed(f"{s.script} --help failed (exit {proc.returncode}): {tail}")
    options = set(re.findall(r"(--[A-Za-z0-9_\-]+)", proc.stdout))
    for arm in arms:
        words = list(arm.overrides)
        for i, word in enumerate(words):
            if not word.startswith("--"):
                continue
            flag = word.split("=", 1)[0]
            if flag not in options:
                raise ValueError(f"arm {arm.label!r}: the pretraining job has no option {flag}")
            choices = re.search(re.escape(flag) + r"\s+\{([^}]*)\}", proc.stdout)
            value = word.split("=", 1)[1] if "=" in word else (words[i + 1] if i + 1 < len(words) else None)
            if choices and value is not None and value not in choices.group(1).split(","):
                raise ValueError(f"arm {arm.label!r}: {flag} {value} is not one of {{{choices.group(1)}}}")
    if "--check_only" in options:
        for arm in arms:
            pending = [r for r in runs if r.label == arm.label and not is_done(r)]
            if pending:
                check_plan(pending[0], s)


def check_plan(run: Run, s: Settings) -> None:
    """ValueError with the job's own one-line error when ``--check_only`` refuses the run's arguments."""
    cmd = [sys.executable, s.script, *job_args(run, s, None), "--check_only", "true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environment(s), timeout=600)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip() and "[WARNING]" not in ln]
        raise ValueError(f"arm {run.label!r}: {lines[-1] if lines else f'the job refused it (exit {proc.returncode})'}")


def check_settings(runs: Sequence[Run], s: Settings) -> None:
    """ValueError when a run directory (finished or not) holds a run started with other settings
    (the study directory may have moved since: finished runs committed elsewhere are still found)."""
    raw = file_digest(s.ds_config)  # the ds_config's bytes: how a record written before config_digest knew it
    for run in runs:
        stamp = run.path("command.json")
        if os.path.exists(stamp):
            with open(stamp, encoding="utf-8") as f:
                found, expected = json.load(f), record(run, runs, s)
            if found.get("ds_config_sha256") == raw:
                found["ds_config_sha256"] = expected["ds_config_sha256"]
            if portable(found) != portable(expected):
                raise ValueError(f"run {run.name} was started with other settings (see {stamp}); "
                                 f"use another --out, or delete {run.directory}")
