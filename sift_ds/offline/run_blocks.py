"""A pretraining run's training blocks from its own command-line arguments, for the tools that read
them without training (``launch/score_corpus.py``, ``launch/kept_dropped.py``): their own options
come before ``--``, the run's after it."""
from __future__ import annotations

import sys
from typing import List, Sequence, Tuple

from ..pretrain.cli import BERT
from ..pretrain.job_data import prepare_data
from ..pretrain.plan import resolve_plan


def split_argv(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(the tool's own words, the run's words after ``--``)."""
    argv = list(argv)
    return (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])


def fail(prog: str, message) -> None:
    """One line on stderr, exit status 2."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(2)


def run_blocks(run_args: Sequence[str]):
    """(RunPlan on one rank, tokenizer, PretrainData) of the run's arguments, which must name its
    tokenizer (the blocks depend on it); ValueError otherwise."""
    options = BERT.parse_args(list(run_args))
    if not options.tokenizer:
        raise ValueError("the pretraining arguments must name the run's tokenizer (--tokenizer): the blocks depend on it")
    plan = resolve_plan(options, world_size=1, create_output_dir=False, starts_run=False)
    tokenizer, data = prepare_data(plan)
    return plan, tokenizer, data
