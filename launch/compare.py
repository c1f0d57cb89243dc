#!/usr/bin/env python
"""Multi-seed comparison of SIFT arms against vanilla pretraining (every arm x seed, resumable),
then a report: results.md, results.csv and plots/ in --out.

    python launch/compare.py --ds_config ds_configs/tiny_cpu_sift.json --arms vanilla,loss:1,entropy:1 \\
        --seeds 3 --out runs/compare -- --model mini --max_steps 300

Every run is launch/pretrain_bert.py, or launch/pretrain_gpt.py when the ds_config's "pretrain"
section sets "objective": "clm"; everything after '--' goes verbatim to it. Arms: 'vanilla',
CRITERION:EXIT_LAYER (loss:1, entropy:2), optionally with @key=value SIFT settings
(loss:1@keep_ratio=0.25); or --arms_file FILE.json, {"label": ["--extra", "words"], ...}.
Running the same command again skips the finished runs and resumes the others;
--analyze_only rewrites the report from the finished runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import List, Optional, Tuple

from sift_ds.pretrain.plan import make_output_dir
from sift_ds.study import analysis, frontier, identity, preflight, report, runs
from sift_ds.study.finished import STUDY_FILE, collect, read_study, saved_arms
from sift_ds.study.arms import Arm, check_arms, load_arms_file, parse_arms

PROG = "compare.py"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"mlm": os.path.join(REPO, "launch", "pretrain_bert.py"), "clm": os.path.join(REPO, "launch", "pretrain_gpt.py")}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        fail(message)


def fail(message, status: int = 2):
    sys.stderr.write(f"{PROG}: error: {message}\n")
    raise SystemExit(status)


def say(message: str) -> None:
    """One progress line, written whole (the runs report from several threads)."""
    sys.stdout.write(f"{PROG}: {message}\n")
    sys.stdout.flush()


def job_script(ds_config: str) -> str:
    """The job every run launches: the causal-LM job for a ds_config whose "pretrain" section sets
    objective "clm", else the BERT job (which checks the objective itself)."""
    try:
        with open(ds_config, encoding="utf-8") as f:
            section = json.load(f).get("pretrain") or {}
    except (OSError, ValueError, AttributeError) as err:
        fail(f"--ds_config {ds_config}: not a JSON object ({err})")
    return SCRIPTS["clm" if section.get("objective") == "clm" else "mlm"]


def seed_list(text: str) -> List[int]:
    """'3' -> seeds 0, 1, 2; '1,5,9' -> those seeds; '4,' -> seed 4 alone."""
    try:
        if "," in text:
            seeds = [int(s) for s in (text[:-1] if text.endswith(",") else text).split(",")]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a comma-separated list of seeds, got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected a positive count or distinct seeds >= 0, got {text!r}")
    return seeds


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def core_list(text: str) -> Tuple[int, ...]:
    """'0,1' -> (0, 1)."""
    try:
        cores = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of core numbers, got {text!r}")
    if not cores or min(cores) < 0:
        raise argparse.ArgumentTypeError(f"expected core numbers >= 0, got {text!r}")
    return cores


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
               usage=f"{PROG} [options] [-- PRETRAIN_ARGS...]")
    p.add_argument("--ds_config", metavar="JSON", help="ds_config of every run (the arms override its 'sift' keys)")
    p.add_argument("--arms", help="comma-separated arm specs: vanilla, CRITERION:EXIT[@key=value...]")
    p.add_argument("--arms_file", metavar="JSON", help="more arms: a JSON object label -> list of extra words")
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2], metavar="N|S1,S2,...", help="seeds 0..N-1, or a list ('S,': seed S alone)")
    p.add_argument("--data", action="append", metavar="PATH", help="--data of every run (repeatable)")
    p.add_argument("--out", default="runs/compare", help="runs/<arm>/seed<S>/, results.md, results.csv, plots/")
    p.add_argument("--num_gpus", type=positive, default=1, help="ranks per run (deepspeed --num_gpus)")
    p.add_argument("--parallel", type=positive, default=1,
                   help="runs at once (after the first, which trains the shared tokenizer)")
    p.add_argument("--pin_cores", type=core_list, default=(), metavar="C1,C2,...",
                   help="pin each run's ranks to cores of their own (num_gpus per run, --parallel runs at once); "
                        "for wall-clock comparisons")
    p.add_argument("--bootstrap", type=positive, default=2000, help="bootstrap resamples of the speed-up intervals")
    p.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--ignore_one_off", action="store_true",
                   help="leave the one-off costs (score file, reference model) out of the budgets: the reading for "
                        "work shared by many runs (default: each run is charged in full)")
    p.add_argument("--analyze_only", action="store_true", help="no runs: rewrite the report from the finished runs")
    p.add_argument("--portable", action="store_true",
                   help="after the report, rewrite study.json and the finished runs' files without this machine's "
                        "paths (data as <data>, known by its sha256; checkout paths relative): before committing a study")
    return p


def split_argv(argv: List[str]) -> Tuple[List[str], List[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def study_arms(args, saved: Optional[dict]) -> List[Arm]:
    arms: List[Arm] = []
    if args.arms:
        arms += parse_arms(args.arms)
    if args.arms_file:
        arms += load_arms_file(args.arms_file)
    if not arms and saved:  # --analyze_only of an earlier study
        arms = saved_arms(saved)
    if not arms:
        raise ValueError("no arms: give --arms and/or --arms_file (--analyze_only found no study.json in --out)")
    return check_arms(arms)


def make_portable(out: str, plan: List[runs.Run], command: str, data: List[str]) -> str:
    """The finished runs' files and study.json without machine paths; returns the rewritten command."""
    if not data and os.path.exists(os.path.join(out, "study.json")):  # --analyze_only: the data of the study
        words = shlex.split(command)
        data = [w for i, w in enumerate(words) if i and words[i - 1] == "--data"]
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    identity.make_portable(out, checkout, data, [r.directory for r in plan if runs.is_done(r)])
    state = os.path.join(out, "study.json")
    if os.path.exists(state):
        with open(state, encoding="utf-8") as f:
            saved = json.load(f)
        saved["command"] = identity.relocate(saved["command"], "\0", checkout, data)  # --out: checkout-relative
        with open(state, "w", encoding="utf-8") as f:
            json.dump(saved, f, indent=1)
        return saved["command"]
    return identity.relocate(command, "\0", checkout, data)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, passthrough = split_argv(argv)
    args = build_parser().parse_args(own)
    out = os.path.abspath(args.out)
    state = os.path.join(out, STUDY_FILE)
    saved = read_study(out) if args.analyze_only else None
    try:
        arms = study_arms(args, saved)
        preflight.check_passthrough(arms, passthrough)
    except ValueError as err:
        fail(err)
    seeds = saved["seeds"] if saved and not any(a.startswith("--seeds") for a in own) else args.seeds
    command = saved["command"] if saved else "python launch/compare.py " + shlex.join(argv)
    plan = runs.plan(arms, seeds, out)

    if not args.analyze_only:
        if not args.ds_config:
            fail("--ds_config is required (unless --analyze_only)")
        if not os.path.isfile(args.ds_config):
            fail(f"--ds_config {args.ds_config}: no such file")
        settings = runs.Settings(job_script(args.ds_config), os.path.abspath(args.ds_config), passthrough, args.data or [],
                                 args.num_gpus, args.parallel, pin_cores=args.pin_cores)
        try:
            preflight.check_pinning(settings)
            preflight.check_settings(plan, settings)
            make_output_dir(out, "--out")
            with open(state, "w", encoding="utf-8") as f:
                json.dump({"command": command, "seeds": seeds,
                           "arms": [[a.label, list(a.overrides), a.spec, a.vanilla] for a in arms]}, f, indent=1)
            if not all(runs.is_done(r) for r in plan):
                preflight.check_flags(settings, arms, plan)
            runs.run_all(plan, settings, say=say)
        except ValueError as err:
            fail(err)
        except runs.RunFailed as err:
            fail(err, status=1)

    try:
        curves, done_seeds, missing, charged = collect(plan, charge=not args.ignore_one_off)
        for name in missing:
            say(f"not finished, left out of the report: {name}")
        if analysis.BASELINE not in curves:
            raise ValueError(f"no finished {analysis.BASELINE} run in {os.path.join(out, 'runs')}: "
                             f"nothing to compare against")
        study = analysis.analyze(curves, n_boot=args.bootstrap, seed=args.bootstrap_seed)
        budget = frontier.analyze(curves, [a.label for a in arms if a.vanilla], args.bootstrap, args.bootstrap_seed)
    except ValueError as err:
        fail(err)
    if args.portable:
        command = make_portable(out, plan, command, args.data or [])
    paths = report.write(out, study, curves, arms, done_seeds, command, budget, charged)
    for label, cost in charged.items():
        say(f"{label}: charged {cost.seconds:.0f} s and {cost.samples:.0f} sample equivalents once ({'; '.join(cost.what)})")
    for a in study.arms:
        t = a.to_target[("acc", "samples")]
        say(f"{a.label}: samples to vanilla's final val_acc x{t.speedup:.3g} "
            f"[{t.interval[0]:.3g}..{t.interval[1]:.3g}], final val_acc {a.final['acc'].mean:.4f}")
    for label, result in (budget.arms.items() if budget else ()):
        for metric in analysis.METRICS:
            s, t = result[(metric, "samples")], result[(metric, "time")]
            say(f"{label}: budget-matched at equal final {analysis.METRICS[metric][0]}: samples x{s.where}{s.speedup:.3g} "
                f"[{s.interval[0]:.3g}..{s.interval[1]:.3g}], wall-clock x{t.where}{t.speedup:.3g} "
                f"[{t.interval[0]:.3g}..{t.interval[1]:.3g}]")
    say(f"wrote {', '.join(os.path.relpath(p) for p in paths[:2])} and {os.path.relpath(os.path.dirname(paths[2]))}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
