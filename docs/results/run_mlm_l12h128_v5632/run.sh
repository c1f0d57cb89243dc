#!/usr/bin/env bash
# How much sooner than run_mlm.py? The end-to-end study at the depth-12 shape with the vocabulary cut
# so that the MLM head takes the share of a dense forward that it takes in BERT-base (BERT L12-H128,
# seq 128, WordPiece 5,632, batch 16): run_mlm.py (run_mlm_sift.py with SIFT off and HF's dense MLM
# head) at 300 / 450 / 675 steps is the frontier; the DeepSpeed job and SiftTrainer with the
# masked-positions-only head, each without and with entropy-SIFT at exit 1, run 450 steps; every
# schedule decays to zero at its own end; 3 seeds, one run per core, seed-major. Every final model is
# scored on the same held-out documents with the same masks.
#   bash docs/results/run_mlm_l12h128_v5632/run.sh       (from the repository root, after make setup)
# Resumable: finished runs are skipped. WORK (default runs/run_mlm_l12h128_v5632) keeps data, models
# and logs; PIN_CORES (default 0,1) places the runs, one per core.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cd "$repo"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.venv/torch_extensions}
exec .venv/bin/python launch/run_mlm_study.py --ds_config ds_configs/l12h128_cpu_study.json --vocab_size 5632 \
  --data "${DATA:-$repo/../shared/data/linux_docs.jsonl.xz}" --budgets 300,450,675 --steps 450 --seeds 3 \
  --pin_cores "${PIN_CORES:-0,1}" --work "${WORK:-runs/run_mlm_l12h128_v5632}" --out "$here" "$@"
