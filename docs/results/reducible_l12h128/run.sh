#!/usr/bin/env bash
# The reducible loss (RHO-LOSS) against online entropy, budget-matched at BERT depth (the budget_l12h128
# protocol: L12-H128 on the Linux documentation, vanilla at 400 / 600 / 900 steps against 600-step arms,
# 3 seeds, pinned cores). 10 % of the training blocks are held out for the reference model (an L4-H128
# BERT trained on them, vanilla, REFERENCE_STEPS steps); every arm, vanilla included, trains on the rest.
#   reducible:1 (stored)   z(exit-1 loss) - z(reference loss stored per block, mean of 4 maskings)
#   reducible:1 (online)   z(exit-1 loss) - z(the reference model's loss on the step's own masks)
#   entropy:1              plain SIFT on the same blocks
# The reference model's training (samples and seconds: its metrics.jsonl, copied into the score file's
# meta) is a cost to add to the reducible arms' budgets.
#   bash docs/results/reducible_l12h128/run.sh    (from the repository root, after make setup)
# Steps, each skipped when its output exists: (1) the reference model, (2) its stored losses
# (launch/score_corpus.py), (3) the study (launch/compare.py, resumable). ARMS overrides the selecting arms.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${SIFT_CHECKOUT:-$(cd "$here/../../.." && pwd)}
cd "$repo"
data=$(realpath "${DATA:-$repo/../shared/data/linux_docs.jsonl.xz}")
tokenizer=${TOKENIZER:-docs/results/budget_l12h128/runs/vanilla_max_steps-400/seed0/tokenizer}
config=ds_configs/l12h128_cpu_study.json
holdout=(--holdout_fraction 0.1)
rel=${here#"$repo"/}
reference=$rel/reference
scores=$rel/scores/reference_loss.npz
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.venv/torch_extensions}
py="nice -n ${NICE:-0} .venv/bin/python"
plain=anneal_start_step=0@anneal_end_step=0
if [ ! -f "$reference/final/config.json" ]; then
  $py launch/pretrain_bert.py --ds_config "$config" --data "$data" --tokenizer "$tokenizer" "${holdout[@]}" \
    --train_on holdout --model ds_configs/models/bert_L4_H128.json --sift_enabled false \
    --max_steps "${REFERENCE_STEPS:-300}" --output_dir "$reference" --resume auto
fi
if [ ! -f "$scores" ]; then
  $py launch/score_corpus.py --out "$scores" --scores reference_loss --reference "$reference/final" --masks 4 \
    -- --ds_config "$config" --data "$data" --tokenizer "$tokenizer" "${holdout[@]}"
fi
arms=${ARMS:-entropy:1@$plain,reducible:1@reference=$scores@$plain,reducible:1@reference=$reference/final@$plain}
exec $py launch/compare.py --ds_config "$config" \
  --arms "vanilla@max_steps=400,vanilla,vanilla@max_steps=900,$arms" \
  --seeds 3 --data "$data" --out "$here" \
  --parallel "${PARALLEL:-2}" --pin_cores "${PIN_CORES:-0,1}" "$@" -- --tokenizer "$tokenizer" "${holdout[@]}"
