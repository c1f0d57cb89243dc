#!/usr/bin/env python
"""Gather one compare.py study per training horizon into the saving-against-length view:

    python launch/horizon.py docs/results/horizon_l4h128/h600 docs/results/horizon_l4h128/h2400 \\
        docs/results/horizon_l4h128/h4800 --out docs/results/horizon_l4h128

writes horizon.md (each arm's budget-matched saving per horizon, and a log-linear trend extrapolated
to --target_tokens with the length where it reaches no saving, labelled a model) and
plots/horizon.png. sift_ds.study.horizon has the details.
"""
import argparse
import os
import sys

from sift_ds.study import horizon, horizon_plot


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", help="compare.py --out folders, one per horizon")
    parser.add_argument("--out", required=True, help="where horizon.md and plots/horizon.png go")
    parser.add_argument("--target_tokens", type=float, default=float(horizon.PAPER_TOKENS),
                        help="the horizon to extrapolate the trend to (default: the paper's BERT-base runs, "
                             "800k steps x 131,072 tokens)")
    args = parser.parse_args(argv)
    if args.target_tokens <= 0:
        parser.error(f"--target_tokens must be positive, got {args.target_tokens:g}")
    try:
        horizons = [horizon.read_horizon(study) for study in args.studies]
    except (ValueError, KeyError, OSError) as error:
        parser.error(str(error))
    if len({h.tokens for h in horizons}) < len(horizons):
        parser.error("two studies have the same horizon (training tokens): give each horizon once")
    os.makedirs(args.out, exist_ok=True)
    text = horizon.table(horizons, args.target_tokens)
    with open(os.path.join(args.out, "horizon.md"), "w", encoding="utf-8") as f:
        f.write("# Budget-matched saving against training length\n\n"
                f"Command: `python launch/horizon.py {' '.join(os.path.relpath(s) for s in args.studies)} "
                f"--out {os.path.relpath(args.out)}`\n\n"
                "Savings are each horizon's own budget-matched figures (compare.py's results.csv: "
                "[95% bootstrap interval over seeds], `>` / `<` a bound off the frontier).\n\n" + text)
    horizon_plot.plot(horizons, os.path.join(args.out, "plots", "horizon.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
