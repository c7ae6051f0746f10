#!/usr/bin/env bash
# The pooling experiment (issue: fuzzy pooling) and the seed's recipes, run in parallel on one GPU.
# Usage: bash benchmarks/gpu_seed_runs.sh PACK.npz OUT_DIR [MAX_MINUTES]
set -u
PACK=$1; OUT=$2; MAXMIN=${3:-6.5}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
PY=${PYTHON:-python3}
run() { name=$1; shift; $PY benchmarks/seed_experiment.py --pack "$PACK" --out "$OUT/$name.json" --max-minutes "$MAXMIN" "$@" > "$OUT/$name.log" 2>&1 & }
for pool in max avg fuzzy fuzzy1; do
  for seed in 0 1 2; do
    run "pool_${pool}_s${seed}" --model seed_m4_gap --pool "$pool" --seed "$seed" --image-size 112 --epochs 30 \
        --batch-size 32 --lr 1e-3 --step-size 10 --gamma 0.5
  done
done
run seed_m4_112_e15 --model seed_m4 --image-size 112 --epochs 15 --batch-size 8 --lr 1e-3 --step-size 10 --gamma 0.5
run seed_m4_gap_112_e15 --model seed_m4_gap --image-size 112 --epochs 15 --batch-size 8 --lr 1e-3 --step-size 10 --gamma 0.5
run seed_m4_full_224 --model seed_m4 --image-size 224 --epochs 200 --batch-size 8 --lr 1e-3 --step-size 10 --gamma 0.5
wait
$PY - "$OUT" <<'PY'
import json, sys, glob, os
rows = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json")))]
with open(os.path.join(sys.argv[1], "summary.jsonl"), "w") as f:
    for r in rows:
        r.pop("history", None)
        f.write(json.dumps(r) + "\n")
        print(json.dumps(r))
PY
