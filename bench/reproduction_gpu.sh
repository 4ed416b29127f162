#!/usr/bin/env bash
# bash bench/reproduction_gpu.sh  -- issue 11's plan on one GPU (PLAN.md, "If a GPU is lent"), cut to what fits
# one 10-minute device command. Seed 0 ran on an H200 on 2026-11-27 (bench/reproduction/RUNNING.md has its times).
#
# Setting: WRN-16 x2 (32-channel stem, BN before blocks only) -> WRN-16 x4, all 60,000 training and 10,000 test
# images of Fashion-MNIST, 15 epochs, batch 128, lr 0.1 cosine; growth at 0.45X with net 1 given.
# What fits (seed 0, or SEEDS=1 / SEEDS=2; `--part gpu` of bench/reproduction_sweep.py): net 1 and net 2 (template mixing),
# MixtureGrowth (init S, protocol P*), Random (P*), Net2Net (P*), w/o fusion (net 1's templates reused, P*),
# then the pilot (Small, Small Match, Large) and Large Match, in that order, so that a run stopped by the time
# limit keeps the growth arms. Left out (each call): the other seeds, the other protocol, init L, the authors' w/o fusion,
# the template-mixing Large rows, Tables 4 and 2.
#
# s* and P* come from mgtool.demo.INIT_SCALE / PROTOCOL (override: INIT_SCALE= / PROTOCOL=authors|lr0.1).
# Data: $DATA_DIR, else /usr/share/datasets/fashion-mnist, else .data/fashion-mnist in the working tree (copy
# the four idx .gz files there, add `/.data/` to .git/info/exclude and name `.data` in the run's carry).
# Results: one JSON per finished arm in bench/results/reproduction/gpu/; with $OUT set, that folder comes back
# as $OUT/reproduction_gpu.tar.gz beside $OUT/tables.md and the log (the device returns at most 8 files).
# Rebuild here: tar xzf reproduction_gpu.tar.gz -C bench/results/reproduction && \
#   python bench/reproduction_sweep.py --report
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"  # repo root, PYTHONPATH, fvcore from .whl/
limit=${LIMIT_S:-500}  # the sweep's share of the 10 minutes; the rest is start-up, report and copying
data=""
for d in "${DATA_DIR:-}" /usr/share/datasets/fashion-mnist .data/fashion-mnist; do
  if [ -n "$d" ] && ls "$d"/train-images-idx3-ubyte* >/dev/null 2>&1; then data=$d; break; fi
done
[ -n "$data" ] || { echo "error: no Fashion-MNIST idx files (set DATA_DIR, see the header)" >&2; exit 1; }
log=${OUT:-runs}/reproduction_gpu.log
mkdir -p "$(dirname "$log")"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout "$limit" $PY bench/reproduction_sweep.py --part gpu --device cuda --threads 0 --data-dir "$data" \
  ${SEEDS:+--seeds "$SEEDS"} ${INIT_SCALE:+--init-scale "$INIT_SCALE"} ${PROTOCOL:+--protocol "$PROTOCOL"} 2>&1 | tee "$log"
echo "sweep exit status: ${PIPESTATUS[0]} (124: stopped at ${limit} s; finished arms are kept)" | tee -a "$log"
$PY bench/reproduction_sweep.py --report >/dev/null 2>>"$log" || true
if [ -n "${OUT:-}" ]; then
  [ -d bench/results/reproduction/gpu ] && tar czf "$OUT/reproduction_gpu.tar.gz" -C bench/results/reproduction gpu
  cp bench/results/reproduction/tables.md "$OUT/" 2>/dev/null || true
fi
