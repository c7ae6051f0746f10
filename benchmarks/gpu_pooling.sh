#!/usr/bin/env bash
# The pooling experiment at 112 px and 30 epochs on one GPU: the twelve runs (max, avg, type-2 and
# type-1 fuzzy pooling x 3 seeds) one after another in one process, so the GPU is never shared.
# Resumable: run it again after a stop and it goes on from the last finished epoch.
# Usage: bash benchmarks/gpu_pooling.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-runs/pooling_112}
PY=${PYTHON:-python3}
PACK=.devdata/endangered11_160.npz
[ -f "$PACK" ] || $PY benchmarks/pack_dataset.py ../shared/data/endangered11 "$PACK" --size 160 --quality 90
$PY benchmarks/pooling_experiment.py --pack "$PACK" --image-size 112 --epochs 30 --step-size 10 --batch-size 64 \
    --threads 8 --out "$OUT"
