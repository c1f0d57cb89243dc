"""Run ``launch/pretrain_bert.py`` for real, in this one process (a world of one), once per command
line of a JSON list, and print one JSON line per run: its exit status and the last line it wrote
to stderr (a refusal's one line). The runs are the job itself (plan, data, DeepSpeed engine, steps,
checkpoint, export); one process only spares each the interpreter's and DeepSpeed's start-up."""
import contextlib
import io
import json
import sys

from sift_ds.pretrain.cli import BERT
from sift_ds.pretrain.lock import unlock_all


def run(argv):
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            BERT.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    unlock_all()  # the next run has its own output directory; the lock is per job
    lines = err.getvalue().strip().splitlines()
    return {"argv": argv, "code": code, "last": lines[-1] if lines else ""}


if __name__ == "__main__":
    for argv in json.load(open(sys.argv[1], encoding="utf-8")):
        print(json.dumps(run(argv)), flush=True)
