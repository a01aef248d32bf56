"""A ~300 MB float32 model: kerasio export (keras + savedmodel + hashed manifest) + verify
vs Keras's own model.save + model.export + load_model + tf.saved_model.load.

Each side runs in its own fresh process group (``--side``, a new session),
rounds interleaved. The parent samples the resident memory of every process in
that session (kerasio's verifier is a second process) every 10 ms to get the
peak RSS. The clock starts when the side has built its model (TensorFlow's
import and the model construction are identical on both sides) and stops when
every process of the side's session has exited, teardown included.

    python benchmarks/bench_large.py [--rounds 5] [--width 4352]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PY, ROOT, PeakRss, cpu_model, median, report, wait_session


def side(name: str, out: Path, width: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    early = None
    if name == "kerasio-early-verifier":  # started before TensorFlow is imported here and the model is built
        import kerasio

        early = kerasio.Session()
        early.start()
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
    t["model_built_wall"] = time.time()  # the parent's clock starts here and stops when the whole group has exited
    start = time.perf_counter()
    if name.startswith("kerasio"):
        import kerasio

        mode = "in-process" if name == "kerasio-in-process" else "fresh-process"
        result = kerasio.export(model, out, reference_inputs=x, formats="keras,savedmodel",
                                verify=kerasio.VerifyOptions(mode=mode, session=early))
        if early is not None:
            early.close()
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
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "side.json"
        proc = subprocess.Popen([PY, __file__, "--side", name, "--out", tmp, "--width", str(width),
                                 "--result", str(result)], stdout=subprocess.DEVNULL, cwd=ROOT / "benchmarks",
                                start_new_session=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        with PeakRss(proc.pid, interval=0.01) as peak:
            proc.wait()
            left = wait_session(proc.pid)
            group_end = time.time()
        if proc.returncode:
            raise SystemExit(f"{name} side failed")
        data = json.loads(result.read_text())
        data["seconds"]["group_total"] = group_end - data["seconds"]["model_built_wall"]
        data["left_processes_behind"] = left
        data["peak_rss_mb"] = peak.bytes / 1e6
        return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--width", type=int, default=4352)
    parser.add_argument("--side")
    parser.add_argument("--out")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.side:
        Path(args.result).write_text(json.dumps(side(args.side, Path(args.out), args.width)))
        return
    names = ["kerasio", "kerasio-in-process", "kerasio-early-verifier", "keras"]
    runs = {name: [] for name in names}
    for i in range(args.rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            runs[name].append(measure(name, args.width))
            print(name, runs[name][-1], file=sys.stderr, flush=True)
    total = {n: median([r["seconds"]["group_total"] for r in runs[n]]) for n in names}
    rss = {n: median([r["peak_rss_mb"] for r in runs[n]]) for n in names}
    report("large", {
        "rounds": args.rounds, "cpu": cpu_model(), "weights_mb": runs["keras"][0]["weights_mb"], "runs": runs,
        "median_s": total, "median_peak_rss_mb": rss,
        "ratio_fresh_process": total["kerasio"] / total["keras"],
        "ratio_in_process": total["kerasio-in-process"] / total["keras"],
        # the same rounds compared pairwise, which cancels slow and fast phases of the machine
        "median_round_ratio": {n: median([a["seconds"]["group_total"] / b["seconds"]["group_total"]
                                          for a, b in zip(runs[n], runs["keras"])]) for n in names[:3]},
        "ratio_early_verifier": total["kerasio-early-verifier"] / total["keras"],
        "rss_ratio_early_verifier": rss["kerasio-early-verifier"] / rss["keras"],
        "rss_ratio_fresh_process": rss["kerasio"] / rss["keras"],
        "rss_ratio_in_process": rss["kerasio-in-process"] / rss["keras"],
        "target_ratio": 1.2, "target_rss_ratio": 1.1})


if __name__ == "__main__":
    main()
