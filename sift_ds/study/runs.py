"""Running every arm x seed of a study as a subprocess of the pretraining job, resumably.

Each run is ``deepspeed --num_gpus G --master_port P launch/pretrain_bert.py --ds_config X
--output_dir OUT/runs/<label>/seed<S> --seed S --resume auto <arm overrides> [--data ...]
[--tokenizer T] <passthrough>`` with its output in ``<run dir>/log.txt``. The first run (first arm,
first seed) goes alone and trains the WordPiece tokenizer that every other run then loads, so all
runs see the same token ids. A run is finished when the job exited 0 and its ``metrics.jsonl`` has
the record of its last step; a ``DONE`` file then marks it, and a re-invocation skips it. An
unfinished run is started again with ``--resume auto`` (the job continues from its last checkpoint).
``command.json`` in each run directory keeps the run's settings: a rerun with other settings is
refused (``check_settings``) rather than mixed into the same directory or report.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from ..content_digest import data_digest
from ..ports import free_port
from ..pretrain.metrics import read_metrics
from .arms import Arm, flags
from .identity import config_digest

# Options the study sets itself for every run; the passthrough must not repeat them.
RESERVED = ("--seed", "--output_dir", "--resume", "--ds_config", "--deepspeed_config", "--deepspeed", "--local_rank")


class RunFailed(RuntimeError):
    """A run (or the preflight check) failed; the message is one line naming the log."""


@dataclass(frozen=True)
class Run:
    label: str
    seed: int
    overrides: Tuple[str, ...]
    directory: str

    @property
    def name(self) -> str:
        return f"{self.label}/seed{self.seed}"

    def path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)


@dataclass
class Settings:
    """What every run shares: the job script, ds_config, data, passthrough words and launcher sizes."""

    script: str
    ds_config: str
    passthrough: List[str] = field(default_factory=list)
    data: List[str] = field(default_factory=list)
    num_gpus: int = 1
    parallel: int = 1
    deepspeed: str = ""
    # Cores to pin the runs to (os.sched_setaffinity): each run at a time gets num_gpus of them, one
    # per rank, so that runs timed side by side do not share a core. Empty: no pinning.
    pin_cores: Tuple[int, ...] = ()

    def __post_init__(self):
        if not self.deepspeed:
            beside = os.path.join(os.path.dirname(sys.executable), "deepspeed")
            self.deepspeed = beside if os.path.exists(beside) else (shutil.which("deepspeed") or "deepspeed")


def plan(arms: Sequence[Arm], seeds: Sequence[int], out: str) -> List[Run]:
    """Every arm x seed, seed-major: each seed's arms run back to back, so a slow drift in the machine's
    load reaches every arm alike (wall-clock figures). The first run is the first arm's first seed."""
    return [Run(a.label, s, a.overrides, os.path.join(out, "runs", a.label, f"seed{s}")) for s in seeds for a in arms]


def shares_tokenizer(s: Settings) -> bool:
    """True unless the passthrough already names a tokenizer for every run."""
    return "--tokenizer" not in flags(s.passthrough)


def without_flag(words: Sequence[str], flag: str) -> List[str]:
    """``words`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == flag:
            skip = True
        elif not word.startswith(flag + "="):
            out.append(word)
    return out


def job_args(run: Run, s: Settings, tokenizer: Optional[str]) -> List[str]:
    args = ["--ds_config", s.ds_config, "--output_dir", run.directory, "--seed", str(run.seed), "--resume", "auto",
            *run.overrides]
    for path in s.data:
        args += ["--data", path]
    if tokenizer:
        args += ["--tokenizer", tokenizer]
    passthrough = list(s.passthrough)
    if "--max_steps" in flags(run.overrides):  # the arm's own budget
        passthrough = without_flag(passthrough, "--max_steps")
    return args + passthrough


def reached_end(run: Run) -> Tuple[bool, str]:
    """(True, '') when metrics.jsonl has the record of step == max_steps, else (False, why)."""
    try:
        records = read_metrics(run.path("metrics.jsonl"))
    except OSError:
        return False, "it wrote no metrics.jsonl"
    last = max((r.get("step", 0) for r in records), default=0)
    total = next((r["max_steps"] for r in reversed(records) if r.get("max_steps")), None)
    if total and any(r.get("step") == total for r in records):
        return True, ""
    return False, f"it stopped at step {last} of {total}"


def is_done(run: Run) -> bool:
    return os.path.exists(run.path("DONE"))


def environment(s: Settings) -> dict:
    """Inherited, with DS_ACCELERATOR=cpu unless set, and the cores split between the runs' ranks
    (one thread per rank when pinned)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("DS_ACCELERATOR", "cpu")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = "1" if s.pin_cores else str(max(1, cores // (s.parallel * s.num_gpus)))
    return env


def core_groups(s: Settings) -> List[Tuple[int, ...]]:
    """The pinned cores split into ``parallel`` groups of ``num_gpus``, one group per concurrent run."""
    g = s.num_gpus
    return [tuple(s.pin_cores[i * g:(i + 1) * g]) for i in range(s.parallel)]


def record(run: Run, runs: Sequence[Run], s: Settings) -> dict:
    """What ``command.json`` keeps: the launcher size and the job's arguments (every run but the
    first loads the first run's tokenizer, unless the passthrough names one)."""
    first = runs[0]
    tokenizer = first.path("tokenizer") if run != first and shares_tokenizer(s) else None
    stamp = {"num_gpus": s.num_gpus, "args": job_args(run, s, tokenizer), "ds_config_sha256": config_digest(s.ds_config)}
    return dict(stamp, data_sha256=data_digest(s.data)) if s.data else stamp


def _job_error(log: str, offset: int) -> str:
    """The job's last error line in the part of the log written by this attempt ('' if none)."""
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        lines = [ln.strip() for ln in f if "error" in ln.lower() and "sigkill_handler" not in ln]
    return f": {lines[-1][:300]}" if lines else ""


def launch(run: Run, runs: Sequence[Run], s: Settings, say: Callable[[str], None],
           cores: Tuple[int, ...] = ()) -> None:
    """Start (or resume) one run and wait; writes DONE on success, raises RunFailed otherwise.
    ``cores``: the launcher and every rank it starts run on these cores only."""
    os.makedirs(run.directory, exist_ok=True)
    settings = record(run, runs, s)
    with open(run.path("command.json"), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1)
    cmd = [s.deepspeed, "--num_gpus", str(s.num_gpus), "--master_port", str(free_port()), s.script, *settings["args"]]
    log = run.path("log.txt")
    where = f", cores {','.join(map(str, cores))}" if cores else ""
    say(f"{run.name}: {'resuming' if os.path.exists(log) else 'starting'}{where} (log: {log})")
    start = time.time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        f.flush()
        offset = f.tell()
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=environment(s), preexec_fn=pin).returncode
    if code != 0:
        raise RunFailed(f"run {run.name} failed (exit {code}){_job_error(log, offset)}; log: {log}")
    ok, why = reached_end(run)
    if not ok:
        raise RunFailed(f"run {run.name} exited 0 but {why}; run the same command again to resume; log: {log}")
    with open(run.path("DONE"), "w", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {time.time() - start:.1f}s\n")
    say(f"{run.name}: done in {time.time() - start:.0f} s")


def run_all(runs: Sequence[Run], s: Settings, say: Callable[[str], None] = print) -> None:
    """The first run alone (it trains the shared tokenizer), then the rest, ``s.parallel`` at a time.
    After a failure no new run starts; the ones running finish, then the first failure is raised.
    Call ``check_settings`` first."""
    if not runs:
        return
    first = runs[0]
    say(f"{sum(map(is_done, runs))} of {len(runs)} runs already finished")
    alone = shares_tokenizer(s)  # else the passthrough names a tokenizer: no run goes first
    free: "queue.Queue[Tuple[int, ...]]" = queue.Queue()
    for group in core_groups(s) if s.pin_cores else [()] * max(1, s.parallel):
        free.put(group)
    if alone and not is_done(first):
        launch(first, runs, s, say, core_groups(s)[0] if s.pin_cores else ())
    if alone and not os.path.isdir(first.path("tokenizer")):
        raise RunFailed(f"run {first.name} left no tokenizer at {first.path('tokenizer')}")
    failures: List[RunFailed] = []
    lock = threading.Lock()

    def one(run: Run) -> None:
        if failures:
            return
        cores = free.get()
        try:
            launch(run, runs, s, say, cores)
        except RunFailed as err:
            with lock:
                failures.append(err)
        finally:
            free.put(cores)

    with ThreadPoolExecutor(max_workers=max(1, s.parallel)) as pool:
        list(pool.map(one, [r for r in (runs[1:] if alone else runs) if not is_done(r)]))
    if failures:
        raise failures[0]
