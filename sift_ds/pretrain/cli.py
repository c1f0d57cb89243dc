"""The command line of a pretraining application (``launch/pretrain_bert.py``, ``launch/pretrain_gpt.py``):
options, the plan, ``--check_only``, the job, and one-line errors (exit status 2) instead of stack traces.
An ``Application`` names the program, the objectives it trains and its own option defaults."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple

from .job import setup_job
from .nsp_distillation import check_options as check_nsp_distillation
from .options import PretrainOptions, build_parser, parse_options
from .plan import RunPlan, resolve_plan
from .save_failure import SaveFailed
from .trainer import NonFiniteLoss
from ..versions import require


@dataclass(frozen=True)
class Application:
    prog: str
    description: str
    objectives: Tuple[str, ...]  # the --objective values this program trains
    other: str  # the program that trains the other objectives (named in the error)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # below the ds_config's "pretrain" section

    def fail(self, err: BaseException) -> None:
        """One line on stderr and exit status 2 (SIFT_DS_TRACEBACK=1 shows the stack trace)."""
        if os.environ.get("SIFT_DS_TRACEBACK"):
            raise err
        sys.stderr.write(f"{self.prog}: error: {err}\n")
        raise SystemExit(2)

    def parse_args(self, argv: Optional[List[str]] = None) -> PretrainOptions:
        """The options of the command line and the ds_config's "pretrain" section."""
        try:
            parser = build_parser(self.prog, self.description, self.defaults)
            options = parse_options(sys.argv[1:] if argv is None else argv, parser, self.defaults)
        except ValueError as err:
            self.fail(err)
        if options.objective not in self.objectives:
            self.fail(ValueError(f"--objective {options.objective}: {self.prog} trains {' / '.join(self.objectives)}; "
                                 f"use {self.other}"))
        return options

    def resolve(self, argv: Optional[List[str]] = None) -> RunPlan:
        """Parse and validate everything that needs no process group (exits with one line on error)."""
        options = self.parse_args(argv)
        try:
            require(("torch", "deepspeed", "transformers", "datasets", "tokenizers"), self.prog)
            plan = resolve_plan(options, create_output_dir=not options.check_only)
            check_nsp_distillation(plan.options, plan.ds_config)  # --async_convergence (docs/multitask.md)
            return plan
        except (ValueError, FileNotFoundError) as err:
            self.fail(err)

    def report_check(self, plan: RunPlan) -> None:
        """--check_only: the plan's decisions on stdout, its warnings on stderr (one line each)."""
        for note in plan.notes:
            print(f"{self.prog}: note: {note}")
        for warning in plan.warnings:
            sys.stderr.write(f"{self.prog}: warning: {warning}\n")
        resume = f"resume {plan.resume.path}" if plan.resume is not None else "fresh start"
        print(f"{self.prog}: check_only: ok: {plan.max_steps} steps, world {plan.world_size}, global batch "
              f"{plan.batch.total}, model {plan.options.model}, sift {'on' if plan.sift.enabled else 'off'}, {resume}")

    def main(self, argv: Optional[List[str]] = None):
        plan = self.resolve(argv)
        if plan.options.check_only:
            self.report_check(plan)
            return None
        try:
            job = setup_job(plan)
        except (ValueError, FileNotFoundError, OSError) as err:
            self.fail(err)
        try:
            return job.run()
        except (NonFiniteLoss, SaveFailed) as err:  # no checkpoint after it, no export: exit status 2
            self.fail(err)


BERT = Application("pretrain_bert.py", "Pretrain a BERT from scratch with SIFT on DeepSpeed.", ("mlm", "mlm+nsp"),
                   "launch/pretrain_gpt.py for causal LMs (clm)")
GPT = Application("pretrain_gpt.py", "Pretrain a causal LM (Llama, Qwen, Mistral, GPT-2, GPT-NeoX) from scratch with "
                  "SIFT on DeepSpeed.", ("clm",), "launch/pretrain_bert.py for masked LMs",
                  defaults={"objective": "clm", "model": "tiny_llama", "vocab_size": 32000, "output_dir": "runs/gpt"})
