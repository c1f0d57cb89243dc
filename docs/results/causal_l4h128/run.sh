#!/usr/bin/env bash
# Does SIFT help causal LMs? A Llama-style L4-H128 model (BPE 4,096, seq 128) on the Linux
# documentation, budget-matched: vanilla at 267 / 400 / 600 steps (the frontier) against SIFT at 400
# steps with entropy and loss at exits 1 and 2 (and entropy at exit 1 on a seeded subset of 32 of
# the 127 predicted positions per row), every cosine schedule decayed to 0 at its own end,
# 3 seeds. Resumable: finished runs (runs/<arm>/seed<S>/DONE) are committed and skipped.
#   bash docs/results/causal_l4h128/run.sh            (from the repository root, after make setup)
# SIFT_CHECKOUT may name a frozen copy of the repository to run the jobs from; ARMS overrides the
# SIFT arms; PIN_CORES (default 0) and PARALLEL (default 1) place the runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${SIFT_CHECKOUT:-$(cd "$here/../../.." && pwd)}
cd "$repo"
data=$(realpath "${DATA:-$repo/../shared/data/linux_docs.jsonl.xz}")
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.venv/torch_extensions}
arms=${ARMS:-entropy:1,loss:1,entropy:2,loss:2,entropy:1@max_positions=32}
exec nice -n "${NICE:-0}" .venv/bin/python launch/compare.py --ds_config ds_configs/l4h128_llama_cpu_study.json \
  --arms "vanilla@max_steps=267,vanilla,vanilla@max_steps=600,$arms" \
  --seeds 3 --data "$data" --out "$here" --parallel "${PARALLEL:-1}" --pin_cores "${PIN_CORES:-0}" "$@"
