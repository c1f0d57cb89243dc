#!/usr/bin/env bash
# Screening of new selection criteria at depth 4 (L4-H128, seq 128, WordPiece 8,192, the Linux
# documentation), in samples only: budget_l4h128's protocol (vanilla at 400 / 600 / 900 steps, the
# frontier, against SIFT arms at 600 steps, every schedule decayed at its own end). The vanilla arms
# and entropy at exit 1 are copies of budget_l4h128's finished runs (same ds_config, data and seeds);
# the new arms run here. Screening decides which arms earn depth-12, timed runs: its wall-clock
# columns are not on an equal footing (the machine was shared while it ran) and are not quoted.
#   bash docs/results/screen_l4h128/run.sh       (from the repository root, after make setup)
# ARMS overrides the new arms. Resumable: finished runs are committed and skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${SIFT_CHECKOUT:-$(cd "$here/../../.." && pwd)}
cd "$repo"
data=$(realpath "${DATA:-$repo/../shared/data/linux_docs.jsonl.xz}")
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.venv/torch_extensions}
arms=${ARMS:-freq_loss:1,freq_loss:1@frequency_baseline=unigram,importance:1}
exec nice -n "${NICE:-10}" .venv/bin/python launch/compare.py --ds_config ds_configs/l4h128_cpu_study.json \
  --arms "vanilla@max_steps=400,vanilla,vanilla@max_steps=900,entropy:1,$arms" \
  --seeds "${SEEDS:-3}" --data "$data" --out "$here" --parallel "${PARALLEL:-1}" "$@"
