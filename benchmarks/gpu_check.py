"""Verification and large-batch prediction on every device, per Keras backend.

Called by ``benchmarks/gpu_check.sh`` once per backend (``KERAS_BACKEND`` set
by the caller); prints one JSON object. Works without TensorFlow: only the
backend-agnostic formats of the bundle are checked.

    KERAS_BACKEND=jax python benchmarks/gpu_check.py BUNDLE --device all
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import kerasio
from kerasio.backends.base import available_devices, device_name, device_scope, precision_policy
from kerasio.backends.environment import keras_backend, resolve_devices


def throughput(bundle, device: str, rows: int, calls: int) -> dict:
    """Rows per second of kerasio.predict on ``rows`` rows, pinned float32, beside plain Keras's
    ``model.predict`` (default batch size, as a user calls it) on the same model, device and rows, interleaved."""
    with device_scope(device), precision_policy("highest"):
        loaded = kerasio.load(bundle, device=device)
        x = np.resize(kerasio.read_manifest(bundle).reference_arrays(bundle)[0]["features"],
                      (rows, len(loaded.feature_names)))
        kerasio.predict(loaded, x)  # compile and warm
        loaded.model.predict(x[:64], verbose=0)
        ours, plain = [], []
        for _ in range(calls):
            start = time.perf_counter()
            kerasio.predict(loaded, x)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            loaded.model.predict(x, verbose=0)
            plain.append(time.perf_counter() - start)
        seconds, plain_s = float(np.median(ours)), float(np.median(plain))
    return {"rows": rows, "ms_per_call": seconds * 1e3, "rows_per_s": rows / seconds,
            "plain_keras_predict_ms": plain_s * 1e3, "median_ratio_vs_plain": seconds / plain_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    backend = keras_backend()
    formats = [a.format for a in kerasio.read_manifest(args.bundle).artifacts
               if kerasio.formats.REGISTRY[a.format].runtime == "keras" and not kerasio.formats.REGISTRY[a.format].needs_trust]
    start = time.perf_counter()
    report = kerasio.verify(args.bundle, options=kerasio.VerifyOptions(device=args.device), formats=formats,
                            in_process=True, record=False)
    verify_s = time.perf_counter() - start
    out = {
        "backend": backend,
        "verify_ok": report.ok,
        "verify_seconds": verify_s,
        "checks": [{k: getattr(c, k) for k in ("format", "device", "device_name", "precision", "max_abs_diff",
                                                "argmax_agreement", "atol", "passed", "tf32_drift",
                                                "device_drift", "seconds", "error")} for c in report.checks],
        "throughput": {d: throughput(args.bundle, d, args.rows, args.calls)
                       for d in resolve_devices("all" if args.device == "all" else args.device, available_devices())},
        "devices": {d: device_name(d) for d in available_devices()},
    }
    print(json.dumps(out))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
