#!/usr/bin/env bash
# The horizon study: does the budget-matched saving grow, hold or shrink with training length?
# L4-H128, seq 128, 16 rows per step, on the Debian documentation corpus (launch/build_corpus.py, every
# package it knows; 9,375 documents, 76 M characters: no run repeats a block). Three horizons H = 600,
# 2,400 and 4,800 steps, each a budget_l4h128-style study in hH/: vanilla at 2H/3, H and 3H/2 steps (the
# frontier) against entropy and loss at exit 1 at H steps, every schedule decayed to zero at its own end.
# The learning-rate warm-up (H/6 steps), SIFT's warm-up (H/20), the evaluation interval (H/12) and the
# checkpoint interval (H/3) scale with H. 3 seeds, seed-major across horizons (seed 0 of every horizon,
# then seed 1, ...), one run per pinned core; the longest runs of a seed start first. Resumable: finished
# runs are committed and skipped. launch/horizon.py then draws the saving against training tokens.
#   bash docs/results/horizon_l4h128/run.sh        (from the repository root, after make setup)
# CORPUS names the corpus file (default: runs/corpora/debian_docs.jsonl.xz, built from the package versions
# in corpus.json when missing); its sha256 must match corpus.json's. HORIZONS, SEEDS (a list), ARMS
# (the selecting arms), PARALLEL, PIN_CORES and NICE override the defaults; SIFT_CHECKOUT as in
# budget_l4h128/run.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${SIFT_CHECKOUT:-$(cd "$here/../../.." && pwd)}
cd "$repo"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.venv/torch_extensions}
py="nice -n ${NICE:-0} .venv/bin/python"
corpus=${CORPUS:-runs/corpora/debian_docs.jsonl.xz}
mkdir -p "$(dirname "$corpus")"
$py launch/build_corpus.py --out "$corpus" --manifest "$here/corpus.json"  # built when missing; its sha256 checked
tokenizer=${here#"$repo"/}/h600/runs/vanilla_max_steps-900/seed0/tokenizer  # seed 0's first run at H = 600 trains it
for seed in ${SEEDS:-0 1 2}; do
  for H in ${HORIZONS:-600 2400 4800}; do
    shared=(--tokenizer "$tokenizer")
    if [ "$H" = 600 ] && [ "$seed" = 0 ]; then shared=(); fi
    $py launch/compare.py --ds_config ds_configs/l4h128_cpu_study.json \
      --arms "vanilla@max_steps=$((3 * H / 2)),${ARMS:-entropy:1,loss:1},vanilla,vanilla@max_steps=$((2 * H / 3))" \
      --seeds "$seed," --data "$corpus" --out "$here/h$H" \
      --parallel "${PARALLEL:-2}" --pin_cores "${PIN_CORES:-0,1}" -- \
      --max_steps "$H" --warmup_steps $((H / 6)) --sift_warmup_steps $((H / 20)) --eval_interval $((H / 12)) \
      --save_interval $((H / 3)) "${shared[@]}"
  done
done
for H in ${HORIZONS:-600 2400 4800}; do  # every horizon's report over every finished seed
  $py launch/compare.py --analyze_only --seeds 0,1,2 --out "$here/h$H" --portable
done
