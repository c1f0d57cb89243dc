#!/usr/bin/env bash
# The timed study at BERT depth: a 12-layer narrow BERT (H 128, seq 128, WordPiece 8,192) on the
# Linux documentation, budget-matched: vanilla at 400 / 600 / 900 steps (the frontier) against SIFT at
# 600 steps, every schedule decayed at its own end, 3 seeds. Timed on an equal footing: each run on a
# core of its own (--pin_cores), two at a time, seed-major order; evaluation is not training time.
#   bash docs/results/budget_l12h128/run.sh       (from the repository root, after make setup)
# ARMS overrides the SIFT arms (default: entropy at exit 1 annealed to full data over the second half
# of the schedule, the study config's default and the winner of docs/results/budget_l4h128, and plain
# entropy at exit 1 with the annealing off, the paper's rule). Resumable: finished runs are committed
# and skipped. PIN_CORES (default 0,1) and PARALLEL (default 2) place the runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${SIFT_CHECKOUT:-$(cd "$here/../../.." && pwd)}
cd "$repo"
data=$(realpath "${DATA:-$repo/../shared/data/linux_docs.jsonl.xz}")
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.venv/torch_extensions}
arms=${ARMS:-entropy:1@anneal_start_step=300@anneal_end_step=600,entropy:1@anneal_start_step=0@anneal_end_step=0}
exec nice -n "${NICE:-0}" .venv/bin/python launch/compare.py --ds_config ds_configs/l12h128_cpu_study.json \
  --arms "vanilla@max_steps=400,vanilla,vanilla@max_steps=900,$arms" \
  --seeds 3 --data "$data" --out "$here" \
  --parallel "${PARALLEL:-2}" --pin_cores "${PIN_CORES:-0,1}" "$@"
