#!/usr/bin/env bash
# Issue 13 GPU check, one call of at most 4 minutes on an H100/H200, run from the repo root:
#   bash bench/gpu_profile.sh
# 1. WRN-28-10 eager training step (bf16 + channels_last, batch 128): plain vs template mixing,
#    before (einsum) and after (matrix products, chunked coefficient gradient), SGD foreach and
#    fused; generation alone; torch.profiler tables of the top CUDA kernels;
# 2. the two bf16/channels_last GPU training tests (fixed in issue 13), if time is left;
# 3. the same step under torch.compile (plain and template mixing), with the time that is left.
# Needs only torch, timm, typer, rich, safetensors. Output also goes to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LIMIT=${LIMIT:-230}  # seconds for the whole script
OUTDIR=${OUT:-/tmp/gpu_profile}
mkdir -p "$OUTDIR"
left() { echo $((LIMIT - SECONDS)); }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
echo "== eager step, generation, profiler"
timeout 150 $PY bench/gpu_profile.py --json-out "$OUTDIR/gpu_profile_eager.json" 2>&1 | tee "$OUTDIR/gpu_profile_eager.txt"
echo "== gpu training tests ($(left)s left)"
if [ "$(left)" -gt 60 ]; then
  timeout $(( $(left) - 35 )) $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_train_gpu.py -k "bf16" 2>&1 \
    | tail -15 | tee "$OUTDIR/gpu_tests.txt"
else
  echo "skipped: too little time left"
fi
echo "== compiled step ($(left)s left)"
if [ "$(left)" -gt 30 ]; then
  timeout $(( $(left) - 5 )) $PY bench/gpu_profile.py --compile --json-out "$OUTDIR/gpu_profile_compile.json" 2>&1 \
    | grep -v "^warm" | tee "$OUTDIR/gpu_profile_compile.txt"
  [ "${PIPESTATUS[0]}" = 124 ] && echo "compile run cut off by the time limit"
else
  echo "skipped: too little time left"
fi
echo "== done in ${SECONDS}s"
