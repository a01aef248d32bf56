#!/usr/bin/env bash
# Scale-out on the GPU machine (no TensorFlow there, so no tf.distribute): `kerasio run --strategy dataparallel`
# (Keras's JAX DataParallel over every GPU JAX sees) against the default single device, on the same generated data;
# then each bundle verified on every device. Writes $OUT/gpu_scale.json.
#
# On the GPU:   run(command="bash benchmarks/gpu_scale.sh", carry=[".whl"])
# On a CPU:     KERAS_BACKEND=jax bash benchmarks/gpu_scale.sh   (runs to completion on the CPU)
#
# Environment: ROWS (default 400000), EPOCHS (3), BATCH (1024), OUT (benchmarks/results), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-benchmarks/results}
ROWS=${ROWS:-400000}; EPOCHS=${EPOCHS:-3}; BATCH=${BATCH:-1024}
mkdir -p "$OUT"
source benchmarks/_device_env.sh || exit 2
export KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" - "$WORK/rows.csv" "$ROWS" <<'PY' || exit 2
import sys
import numpy as np, pandas as pd
from kerasio.recipe.data import DEFAULT_DATA
base = pd.read_csv(DEFAULT_DATA)
pick = np.random.default_rng(0).integers(0, len(base), int(sys.argv[2]))
frame = base.iloc[pick].reset_index(drop=True)
features = [c for c in frame.columns if c != "species"]
frame[features] = (frame[features] * np.random.default_rng(1).normal(1, 0.02, (len(frame), len(features)))).round(3)
frame.to_csv(sys.argv[1], index=False)
PY
status=0
for strategy in default dataparallel; do
  "$PYTHON" -m kerasio run --data "$WORK/rows.csv" --label species --strategy "$strategy" --epochs "$EPOCHS" \
    --batch-size "$BATCH" --formats keras --out "$WORK/$strategy" --json > "$OUT/gpu_scale_$strategy.json" \
    2> "$OUT/gpu_scale_$strategy.log" || status=1
  "$PYTHON" -m kerasio verify "$WORK/$strategy" --device all --json > "$OUT/gpu_scale_${strategy}_verify.json" \
    2>> "$OUT/gpu_scale_$strategy.log" || status=1
done
"$PYTHON" - "$OUT" "$ROWS" "$BATCH" "$WORK" > "$OUT/gpu_scale.json" <<'PY'
import json, statistics, subprocess, sys
out, rows, batch, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip() or None
except OSError:
    gpu = None
result = {"gpu": gpu, "rows": rows, "global_batch": batch, "runs": {}}
for strategy in ("default", "dataparallel"):
    try:
        run = json.load(open(f"{out}/gpu_scale_{strategy}.json"))
        check = json.load(open(f"{out}/gpu_scale_{strategy}_verify.json"))
    except (OSError, ValueError) as exc:
        result["runs"][strategy] = {"error": f"{exc}; see {out}/gpu_scale_{strategy}.log"}
        continue
    seconds = [r["seconds"] for r in run["trace"]]
    result["runs"][strategy] = {
        "epoch_seconds": seconds, "steady_epoch_seconds": statistics.median(seconds[1:] or seconds),
        "test_accuracy": run["metrics"]["test_accuracy"], "published": run["published"],
        "verified_in_run": (run["verification"] or {}).get("ok"),
        "verify_all_devices": [{k: c.get(k) for k in ("device", "device_name", "max_abs_diff", "passed")}
                               for c in check.get("checks", [])],
        "distribution": json.load(open(f"{work}/{strategy}/kerasio.json"))["training"].get("distribution")}
print(json.dumps(result, indent=2))
PY
cat "$OUT/gpu_scale.json"
exit $status
