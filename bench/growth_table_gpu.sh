#!/usr/bin/env bash
# bash bench/growth_table_gpu.sh [OUT]  -- the Table 1 analogue on one GPU, larger nets, full Fashion-MNIST.
# WRN-16 x1 (16-channel stem) -> WRN-16 x2 on all 60,000 training images, 10-epoch schedule of the
# large net, 3 seeds, accuracy on the full test set; bf16 autocast (the engine's default on CUDA).
# Expected: well under 10 minutes on one H100 (prepared, not yet run). Resumable like the CPU run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/growth_table_gpu}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python bench/growth_table.py --only table1 --device cuda --out "$out" \
  --train-size 0 --eval-size 2000 --depth 16 --small-width 1 --epochs 10 --seeds 3
