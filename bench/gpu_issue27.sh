#!/usr/bin/env bash
# Issue 27's GPU checks, one device command of at most 10 minutes on one H100/H200, from the repo root:
#   bash bench/gpu_issue27.sh
#   1. bench/gpu_check.sh --batch-size 512 --compile off: `pytest -m gpu` (the Triton kernels' GPU tests in
#      tests/test_mixing_triton.py included: triton vs torch on CUDA, no host-device sync in generation), then
#      throughput and MFU of WRN-28-10 at batch 512 (plain vs template mixing with the kernels);
#   2. bench/gpu_profile.py: eager step at batch 128 (plain, mgtool with the kernels, mgtool-torch, einsum-before;
#      SGD foreach and fused), generation alone beside its bandwidth limit, profiler tables;
#   3. bench/gpu_profile.py --table: template mixing / plain for eager, compile and compile with CUDA graphs
#      at batch 128 and 512 (rows kept as they finish; the part is cut at the time left).
# Files (at most 5, the device returns 8): $OUT/issue27.log, gpu_tests.xml, train_throughput.json,
# gpu_profile_eager.json, gpu_profile_table.json; without $OUT they go to bench/results/gpu/. Commit them in
# bench/results/gpu/ with the card's name (it is in every JSON and at the top of the log).
# Needs torch and triton (in the device image); fvcore from .whl/ as bench/gpu_check.sh says (else FLOPs by hooks).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
LIMIT=${LIMIT:-570}  # seconds for the whole script
DIR=${OUT:-bench/results/gpu}
mkdir -p "$DIR"
left() { echo $((LIMIT - SECONDS)); }
{
echo "== $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
echo "== 1. gpu_check.sh: pytest -m gpu, throughput at batch 512 ($(left)s left)"
OUT=$DIR timeout 250 bash bench/gpu_check.sh --batch-size 512 --compile off
echo "== 2. eager step, generation vs bandwidth limit, profiler ($(left)s left)"
timeout 130 $PY bench/gpu_profile.py --json-out "$DIR/gpu_profile_eager.json"
echo "== 3. step ratio: eager, compile, CUDA graphs at batch 128 and 512 ($(left)s left)"
if [ "$(left)" -gt 40 ]; then
  timeout $(( $(left) - 10 )) $PY bench/gpu_profile.py --table --json-out "$DIR/gpu_profile_table.json" \
    2>&1 | grep -v "^warm"
  [ "${PIPESTATUS[0]}" = 124 ] && echo "table cut off by the time limit (rows so far are in gpu_profile_table.json)"
else
  echo "skipped: too little time left"
fi
echo "== done in ${SECONDS}s"
} 2>&1 | tee "$DIR/issue27.log"
