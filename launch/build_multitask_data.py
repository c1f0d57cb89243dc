#!/usr/bin/env python
"""Build the multi-task setup of the asynchronous-convergence study from a corpus of reStructuredText
documents (sift_ds.study.multitask_data says how each label is made):

    python launch/build_multitask_data.py --corpus linux_docs.jsonl.xz --out multitask_data

Writes the train / validation / test splits (``datasets.DatasetDict.save_to_disk``; columns ``text``,
``doc_id``, ``example_index`` and ``<task>_labels`` for the tasks section, code, translated and order)
and ``tasks.json`` beside them: the section names by label, and per split and task the count of each
label. Prints tasks.json.
"""
import argparse
import json
import os
import sys

from sift_ds.study.multitask_data import TASKS, build, label_counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="JSON lines of {id: relative path, text} (.jsonl, .jsonl.xz)")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--sections", type=int, default=12, help="section classes before 'other'")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sentence-order swaps")
    args = parser.parse_args(argv)
    prog = os.path.basename(sys.argv[0]) if argv is None else "build_multitask_data.py"
    try:
        if not os.path.isfile(args.corpus):
            raise ValueError(f"--corpus {args.corpus}: no such file")
        if args.sections < 1:
            raise ValueError(f"--sections must be >= 1, got {args.sections}")
        splits, names = build(args.corpus, args.sections, args.seed)
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    splits.save_to_disk(args.out)
    summary = {"corpus": os.path.abspath(args.corpus), "seed": args.seed, "tasks": list(TASKS),
               "section_names": names, "examples": {s: len(d) for s, d in splits.items()},
               "labels": {s: label_counts(d) for s, d in splits.items()}}
    with open(os.path.join(args.out, "tasks.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
