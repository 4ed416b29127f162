#!/usr/bin/env bash
# One prepared GPU check for issue 3 (training). Run from the repo root on a CUDA machine, e.g.
# through the device tool:   bash bench/gpu_check.sh            (about 5-8 minutes on an H100)
#   1. the gpu-marked tests (pytest -m gpu);
#   2. training throughput and MFU of WRN-28-10 at 32x32, bf16 autocast + channels_last, with and
#      without torch.compile, template-mixing vs plain;
#   3. the GPU-resident loader vs the DataLoader path (data alone, and training fed by each).
# Full numbers go to $OUT/train_throughput.json (and the tests' report to $OUT/gpu_tests.xml) when $OUT is set. The device image has torch, timm,
# typer, rich and safetensors but not fvcore: carry its sources in .whl/ (fvcore and iopath sdists,
# yacs and termcolor wheels; `pip download --no-deps fvcore iopath yacs termcolor -d .whl`) and this
# script installs them; without them the benchmark counts FLOPs with conv/linear hooks and the
# tests that need fvcore are reported as failing.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
$PY -c "import fvcore" 2>/dev/null && echo "fvcore: yes" || echo "fvcore: MISSING (FLOPs by hooks)"
echo "== gpu tests"
$PY -m pytest -q -m gpu -p no:cacheprovider ${OUT:+--junitxml "$OUT/gpu_tests.xml"} tests/ 2>&1 | tail -15
echo "== throughput"
$PY bench/train_throughput.py --device cuda ${OUT:+--json-out "$OUT/train_throughput.json"} "$@"
