#!/usr/bin/env bash
# bash bench/growth_table_gpu.sh [RUNS]  -- the Table 1 analogue on one GPU, larger nets, full Fashion-MNIST.
# WRN-16 x1 (16-channel stem) -> WRN-16 x2 on all 60,000 training images, 10-epoch schedule of the
# large net, 3 seeds, accuracy on the full test set; bf16 autocast (the engine's default on CUDA).
# The same sweep of recipes as the CPU run (bench/growth_table.py), under its own name: one JSON per
# finished arm in bench/results/growth_table_gpu/ (or $OUT/results when $OUT is set), and
# `python bench/growth_table.py --name growth_table_gpu --report` rebuilds its tables from them.
# Expected: well under 10 minutes on one H100 (prepared, not yet run). Resumable like the CPU run.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/growth_table_gpu}
results=${OUT:+$OUT/results}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python bench/growth_table.py --name growth_table_gpu --only table1 --device cuda --out "$runs" \
  ${results:+--results "$results"} --train-size 0 --eval-size 2000 --depth 16 --small-width 1 --epochs 10 --seeds 3
