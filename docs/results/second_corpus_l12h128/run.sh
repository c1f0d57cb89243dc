#!/usr/bin/env bash
# The criteria study's final comparison on a second corpus of real prose: Debian's documentation
# packages other than the Linux kernel's (the study corpus) and the Python documentation (kept aside
# for independent checks): PostgreSQL, Perl, Git, Rust, Erlang, Apache, CMake, SQLite and Node.js
# manuals, the Debian handbook, policy and developers' reference; 6,322 documents, 52.9 M characters
# (corpus.json, the manifest of the package versions it was built from). The budget_l12h128 protocol:
# L12-H128, vanilla at 400 / 600 / 900 steps (the frontier, each decayed at its own end) against
# 600-step plain entropy at exit 1 (no annealing) and WINNER, the criteria study's best arm when it is
# not plain entropy (empty by default); 3 seeds, seed-major, one run per pinned core, wall-clock
# included. The first run trains the WordPiece tokenizer on this corpus; every other run loads it.
#   bash docs/results/second_corpus_l12h128/run.sh    (from the repository root, after make setup)
# CORPUS names the corpus file (default: runs/corpora/debian_other_docs.jsonl.xz, built from the
# package versions in corpus.json when missing); its sha256 must match corpus.json's. WINNER (more
# arms, comma-separated), PARALLEL, PIN_CORES and NICE override the defaults. Resumable.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${SIFT_CHECKOUT:-$(cd "$here/../../.." && pwd)}
cd "$repo"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.venv/torch_extensions}
py="nice -n ${NICE:-0} .venv/bin/python"
corpus=${CORPUS:-runs/corpora/debian_other_docs.jsonl.xz}
mkdir -p "$(dirname "$corpus")"
$py launch/build_corpus.py --out "$corpus" --manifest "$here/corpus.json"  # built when missing; its sha256 checked
arms=entropy:1@anneal_start_step=0@anneal_end_step=0${WINNER:+,$WINNER}
exec $py launch/compare.py --ds_config ds_configs/l12h128_cpu_study.json \
  --arms "vanilla@max_steps=400,vanilla,vanilla@max_steps=900,$arms" \
  --seeds 3 --data "$corpus" --out "$here" \
  --parallel "${PARALLEL:-2}" --pin_cores "${PIN_CORES:-0,1}" "$@"
