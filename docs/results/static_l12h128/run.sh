#!/usr/bin/env bash
# Static selection against online entropy, budget-matched at BERT depth (the budget_l12h128 protocol:
# L12-H128 on the Linux documentation, vanilla at 400 / 600 / 900 steps against 600-step arms, 3 seeds,
# pinned cores). Every selecting arm keeps the same share per gross batch (keep 0.5, warm-up 30 steps,
# no annealing); they differ only in the score:
#   entropy:1                   the exit-1 entropy of the current model (online, SIFT)
#   stored:frozen_entropy       the exit-1 entropy of the model at the end of the warm-up, scored once
#   stored:unigram_entropy      the block's unigram entropy over its token ids (free)
#   stored:unique_share         the block's unique-token share (free)
#   bash docs/results/static_l12h128/run.sh       (from the repository root, after make setup)
# Steps: (1) the warm-up checkpoint (seed 0's SIFT run stopped at step 30), (2) the score file of the
# training blocks (launch/score_corpus.py), (3) the study (launch/compare.py). Each step is skipped when
# its output exists; the study is resumable. ARMS overrides the selecting arms; TOKENIZER, DATA, NICE,
# PARALLEL and PIN_CORES as in budget_l12h128/run.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${SIFT_CHECKOUT:-$(cd "$here/../../.." && pwd)}
cd "$repo"
data=$(realpath "${DATA:-$repo/../shared/data/linux_docs.jsonl.xz}")
tokenizer=${TOKENIZER:-docs/results/budget_l12h128/runs/vanilla_max_steps-400/seed0/tokenizer}
config=ds_configs/l12h128_cpu_study.json
rel=${here#"$repo"/}
scores=$rel/scores/linux_docs.npz
warm=$rel/warmup_seed0
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.venv/torch_extensions}
py="nice -n ${NICE:-0} .venv/bin/python"
plain=anneal_start_step=0@anneal_end_step=0
if [ ! -f "$warm/checkpoints/global_step30/mp_rank_00_model_states.pt" ]; then
  $py launch/pretrain_bert.py --ds_config "$config" --data "$data" --tokenizer "$tokenizer" --seed 0 \
    --sift_anneal_start_step 0 --sift_anneal_end_step 0 --exit_interval 30 --output_dir "$warm" --resume auto
fi
if [ ! -f "$scores" ]; then
  $py launch/score_corpus.py --out "$scores" --scores unigram_entropy,unique_share,frozen_entropy \
    --checkpoint "$warm/checkpoints/global_step30" -- --ds_config "$config" --data "$data" --tokenizer "$tokenizer"
fi
arms=${ARMS:-entropy:1@$plain,stored:frozen_entropy@score_file=$scores@$plain,stored:unigram_entropy@score_file=$scores@$plain,stored:unique_share@score_file=$scores@$plain}
exec $py launch/compare.py --ds_config "$config" \
  --arms "vanilla@max_steps=400,vanilla,vanilla@max_steps=900,$arms" \
  --seeds 3 --data "$data" --out "$here" \
  --parallel "${PARALLEL:-2}" --pin_cores "${PIN_CORES:-0,1}" "$@" -- --tokenizer "$tokenizer"
