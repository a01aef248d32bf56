"""A ~300 MB float32 model: kerasio export (keras + savedmodel + hashed manifest) + verify
vs Keras's own model.save + model.export + load_model + tf.saved_model.load.

Each side runs in its own fresh process (``--side``), rounds interleaved. The
parent samples the resident memory of each side's whole process tree (kerasio's
verifier is a second process) every 10 ms to get the peak RSS. Inside each
side, the stages are timed after the model is built, so TensorFlow's import and
the model construction (identical on both sides) are not counted.

    python benchmarks/bench_large.py [--rounds 5] [--width 4352]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import PY, ROOT, median, report


def side(name: str, out: Path, width: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    layers = [keras.Input((10,), name="features")]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(5)]
    layers += [keras.layers.Dense(3, activation="softmax")]
    model = keras.Sequential(layers)
    x = np.random.default_rng(0).normal(size=(200, 10)).astype("float32")
    params = model.count_params()
    t = {}
    start = time.perf_counter()
    if name.startswith("kerasio"):
        import kerasio

        mode = "in-process" if name == "kerasio-in-process" else "fresh-process"
        result = kerasio.export(model, out, reference_inputs=x, formats="keras,savedmodel", verify=mode)
        t["export_and_verify"] = time.perf_counter() - start
        result.report.raise_for_failure()
        t["export_by_format"] = result.seconds
        t["verify_by_format"] = {c.format: c.seconds for c in result.report.checks}
    else:
        import tensorflow as tf

        model.save(out / "model.keras")
        t["save"] = time.perf_counter() - start
        model.export(str(out / "serving" / "1"), verbose=False)
        t["export"] = time.perf_counter() - start - t["save"]
        ref = model.predict(x, verbose=0)
        mark = time.perf_counter()
        reloaded = keras.models.load_model(out / "model.keras")
        np.testing.assert_allclose(reloaded.predict(x, verbose=0), ref, atol=1e-6)
        t["load_keras"] = time.perf_counter() - mark
        mark = time.perf_counter()
        served = tf.saved_model.load(str(out / "serving" / "1"))
        np.testing.assert_allclose(served.serve(x).numpy(), ref, atol=1e-6)
        t["load_savedmodel"] = time.perf_counter() - mark
    t["total"] = time.perf_counter() - start
    return {"params": params, "weights_mb": params * 4 / 1e6, "seconds": t}


def measure(name: str, width: int) -> dict:
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([PY, __file__, "--side", name, "--out", tmp, "--width", str(width)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT / "benchmarks",
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        peak = [0]
        root = psutil.Process(proc.pid)

        def sample():
            while proc.poll() is None:
                try:
                    procs = [root, *root.children(recursive=True)]
                    peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs if p.is_running()))
                except psutil.Error:
                    pass
                time.sleep(0.01)

        thread = threading.Thread(target=sample)
        thread.start()
        out, _ = proc.communicate()
        thread.join()
        if proc.returncode:
            raise SystemExit(f"{name} side failed")
        data = json.loads(out.strip().splitlines()[-1])
        data["peak_rss_mb"] = peak[0] / 1e6
        return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--width", type=int, default=4352)
    parser.add_argument("--side")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, Path(args.out), args.width)))
        return
    names = ["kerasio", "kerasio-in-process", "keras"]
    runs = {name: [] for name in names}
    for i in range(args.rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            runs[name].append(measure(name, args.width))
            print(name, runs[name][-1], file=sys.stderr, flush=True)
    total = {n: median([r["seconds"]["total"] for r in runs[n]]) for n in names}
    rss = {n: median([r["peak_rss_mb"] for r in runs[n]]) for n in names}
    report("large", {
        "rounds": args.rounds, "weights_mb": runs["keras"][0]["weights_mb"], "runs": runs,
        "median_s": total, "median_peak_rss_mb": rss,
        "ratio_fresh_process": total["kerasio"] / total["keras"],
        "ratio_in_process": total["kerasio-in-process"] / total["keras"],
        # the same rounds compared pairwise, which cancels slow and fast phases of the machine
        "median_round_ratio": {n: median([a["seconds"]["total"] / b["seconds"]["total"]
                                          for a, b in zip(runs[n], runs["keras"])]) for n in names[:2]},
        "rss_ratio_fresh_process": rss["kerasio"] / rss["keras"],
        "rss_ratio_in_process": rss["kerasio-in-process"] / rss["keras"],
        "target_ratio": 1.2, "target_rss_ratio": 1.1})


if __name__ == "__main__":
    main()
