#!/usr/bin/env bash
# The pretraining job's mlm+nsp with and without NSP distilled once converged (BERT L4-H128, seq 128,
# WordPiece 8,192, batch 16, SIFT off, 3 seeds): both arms train 3,000 steps with the same schedule,
# decayed to zero at the end, and evaluate every 200 steps on the job's 800 validation pairs. In
# nsp_distilled, NSP counts as converged once 2 evaluations in a row fail to raise its validation
# accuracy by more than 0.01 over the best; from then on its loss is the KL divergence (T = 2) to a
# frozen copy of the model at that best evaluation. Every run loads the tokenizer beside this script
# (WordPiece, trained on the corpus by launch/prepare_data.py --vocab_size 8192). Resumable: finished
# runs are committed and skipped.
#   bash docs/results/nsp_distill_l4h128/run.sh            (from the repository root, after make setup)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cd "$repo"
data=$(realpath "${DATA:-$repo/../shared/data/linux_docs.jsonl.xz}")
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.venv/torch_extensions}
exec .venv/bin/python launch/compare.py --ds_config ds_configs/l4h128_cpu_study.json --arms_file "$here/arms.json" \
  --seeds 3 --data "$data" --out "$here" --parallel "${PARALLEL:-2}" --pin_cores "${PIN_CORES:-0,1}" "$@" \
  -- --objective mlm+nsp --max_steps 3000 --eval_interval 200 --log_interval 100 --tokenizer "$here/tokenizer"
