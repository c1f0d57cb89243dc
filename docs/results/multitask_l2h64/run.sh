#!/usr/bin/env bash
# Asynchronous convergence against its baselines (L2-H64 from scratch, four tasks from the Linux
# kernel documentation, 3 seeds): one process per run on one pinned core, seed-major. Resumable:
# finished runs (runs/<arm>/seed<S>/result.json) are committed and skipped; then report.md.
#   bash docs/results/multitask_l2h64/run.sh            (from the repository root, after make setup)
# CORE picks the core (default 1); extra arguments go to launch/multitask_study.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cd "$repo"
data=$(realpath "${DATA:-$repo/../shared/data/linux_docs.jsonl.xz}")
exec taskset -c "${CORE:-1}" nice -n "${NICE:-5}" .venv/bin/python launch/multitask_study.py --corpus "$data" \
  --out "$here" --seeds 3 "$@"
