#!/usr/bin/env python
"""Read a finished compare.py study several ways beside its report's reading (results.md):

    python launch/readings.py docs/results/budget_l12h128
    python launch/readings.py docs/results/horizon_l4h128/h2400 --seeds 0,1

prints, per selecting arm and figure, the budget-matched speed-up on the seed-mean vanilla frontier
interpolated linearly (the report's) and in log(cost), each with its bootstrap interval, and each
seed read on the seed-mean frontier and on its own seed's frontier (sift_ds.study.readings).
--seeds reads a subset of the seeds; nothing in the study is written. --events adds each vanilla
seed's departure from the other seeds and how much faster each seed's last run trained alone
(sift_ds.study.run_events).
"""
import argparse
import os
import sys

from sift_ds.pretrain.metrics import read_metrics
from sift_ds.study import readings, run_events, runs
from sift_ds.study.finished import collect, read_study, run_seeds, saved_arms


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def seed_list(text: str):
    try:
        seeds = [int(s) for s in text.split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds, got {text!r}")
    return seeds


def main(argv=None) -> int:
    parser = Parser(prog="readings.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a compare.py --out folder with study.json and runs/")
    parser.add_argument("--seeds", type=seed_list, help="read only these seeds (default: every finished seed)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the intervals")
    parser.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--ignore_one_off", action="store_true", help="as compare.py's")
    parser.add_argument("--events", type=float, metavar="MARGIN",
                        help="also the run events, a seed departing by more than MARGIN in validation loss")
    args = parser.parse_args(argv)
    saved = read_study(args.study)
    if saved is None:
        parser.error(f"{args.study}: no study.json (a compare.py --out folder is expected)")
    arms = saved_arms(saved)
    plan = [r for r in runs.plan(arms, run_seeds(args.study, arms), os.path.abspath(args.study))
            if args.seeds is None or r.seed in args.seeds]
    try:
        curves, seeds, _, _ = collect(plan, charge=not args.ignore_one_off)
        result = readings.read(curves, seeds, [a.label for a in arms if a.vanilla], args.bootstrap, args.bootstrap_seed)
    except ValueError as err:
        parser.error(f"{args.study}: {err}")
    chosen = f"seeds {', '.join(map(str, args.seeds))}" if args.seeds else "every finished seed"
    print(f"# {os.path.relpath(args.study)}: budget-matched readings ({chosen})\n")
    print(readings.markdown(result))
    if args.events is not None:
        records = {(r.label, r.seed): read_metrics(r.path("metrics.jsonl")) for r in plan if runs.is_done(r)}
        print(run_events.events_markdown(records, [a.label for a in arms if a.vanilla], args.events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
