#!/usr/bin/env bash
# One prepared run for the GPU machine (no TensorFlow there): verify a CPU-made bundle with the
# JAX and PyTorch backends on every device, time verification and large-batch predict, write JSON.
#
# Here, once:   ../shared/device/fetch_wheels.sh && .venv/bin/kerasio run --formats keras,h5,weights
# On the GPU:   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", "saved_models/seed"])
# On a CPU:     bash benchmarks/gpu_check.sh   (uses --device auto; runs to completion)
#
# Environment: BUNDLE (default saved_models/seed), DEVICE (default: all when a GPU is visible, else auto),
# OUT (default benchmarks/results), PYTHON (default .venv/bin/python if present, else python3), ROWS and CALLS
# (the predict throughput batch, default 100000 rows, 3 timed calls).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
BUNDLE=${BUNDLE:-saved_models/seed}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
source benchmarks/_device_env.sh || exit 2
if [ ! -f "$BUNDLE/kerasio.json" ]; then
  echo "gpu_check: $BUNDLE has no bundle; making one on this machine's CPU" >&2
  "$PYTHON" -m kerasio run --out "$BUNDLE" --formats keras,h5,weights --no-verify >/dev/null || exit 2
fi
if [ -z "${DEVICE:-}" ]; then
  DEVICE=auto
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && DEVICE=all
fi
status=0
results=()
for backend in jax torch; do
  if ! "$PYTHON" -c "import $backend" >/dev/null 2>&1; then
    echo "{\"backend\": \"$backend\", \"skipped\": \"$backend is not installed here\"}" > "$OUT/gpu_check_$backend.json"
  else
    KERAS_BACKEND=$backend TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" benchmarks/gpu_check.py "$BUNDLE" --device "$DEVICE" \
      --rows "${ROWS:-100000}" --calls "${CALLS:-3}" \
      > "$OUT/gpu_check_$backend.json" 2> "$OUT/gpu_check_$backend.log" || status=1
  fi
  results+=("$OUT/gpu_check_$backend.json")
done
"$PYTHON" - "$DEVICE" "${results[@]}" > "$OUT/gpu_check.json" <<'PY'
import json, platform, subprocess, sys
device, paths = sys.argv[1], sys.argv[2:]
runs = []
for p in paths:
    text = open(p).read().strip()
    runs.append(json.loads(text.splitlines()[-1]) if text else {"error": f"no output; see {p[:-5]}.log"})
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip() or None
except OSError:
    gpu = None
print(json.dumps({"device_requested": device, "gpu": gpu, "machine": platform.node(), "runs": runs}, indent=2))
PY
cat "$OUT/gpu_check.json"
exit $status
