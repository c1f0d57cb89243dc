#!/usr/bin/env bash
# Which knobs move the budget-matched saving (L4-H128, study B's regime, 3 seeds): vanilla at 400 /
# 600 / 900 steps (the frontier) against SIFT variants at 600 steps, every schedule decayed at its
# own end. Resumable: finished runs (runs/<arm>/seed<S>/DONE) are committed and skipped.
#   bash docs/results/budget_l4h128/run.sh            (from the repository root, after make setup)
# SIFT_CHECKOUT may name a frozen copy of the repository to run the jobs from, so that code changes
# made while the study runs cannot reach it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${SIFT_CHECKOUT:-$(cd "$here/../../.." && pwd)}
cd "$repo"
data=$(realpath "${DATA:-$repo/../shared/data/linux_docs.jsonl.xz}")
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.venv/torch_extensions}
exec nice -n "${NICE:-10}" .venv/bin/python launch/compare.py --ds_config ds_configs/l4h128_cpu_study.json \
  --arms vanilla@max_steps=400,vanilla,vanilla@max_steps=900,entropy:1,entropy:1@anneal_start_step=450@anneal_end_step=600,entropy:1@anneal_start_step=300@anneal_end_step=600,entropy:1@sampling=rank,entropy:1@keep_ratio=0.25,entropy:2,entropy:1@random_fraction=0.25 \
  --seeds 3 --data "$data" --out "$here" --parallel "${PARALLEL:-2}" "$@"
