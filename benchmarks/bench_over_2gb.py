"""A model over 2 GiB of float32 weights (past protobuf's limit): kerasio's export + verify + predict against
Keras's own calls for the same targets, and the verifier's peak memory against its bound.

* **kerasio**: ``export(formats="keras,savedmodel,onnx,openvino", verify=True)`` (the ONNX graph keeps its weights
  beside it, hashed), then ``load(format="onnx").run`` on the reference rows;
* **keras**: ``model.save``, ``model.export`` as ``tf_saved_model``, ``onnx`` and ``openvino``, each reloaded in the
  same process and compared with ``np.allclose`` (a call that raises is recorded, and its time counted);
* **verify alone**: ``kerasio verify`` of the bundle, its whole process group's peak RSS, less that of verifying a
  64-unit model's bundle of the same formats (the runtimes' own footprint: the CLI, TensorFlow, onnxruntime and
  OpenVINO imported in the worker), against the bound the README states: twice the model plus one batch.

Each side is a process group of its own (a new session); the clock starts once the side has built its model and
stops when every process of the group has exited; peak RSS is the group's summed resident memory, sampled every
10 ms.

    python benchmarks/bench_over_2gb.py [--width 10500]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PY, ROOT, PeakRss, cpu_model, machine, report, wait_session

FORMATS = "keras,savedmodel,onnx,openvino"


def build(width: int):
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    layers = [keras.Input((10,), name="features"), keras.layers.Dense(width, activation="relu")]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(5)]
    layers += [keras.layers.Dense(3, activation="softmax", name="probabilities")]
    model = keras.Sequential(layers)
    return model, np.random.default_rng(0).normal(size=(32, 10)).astype("float32")


def side(name: str, out: Path, width: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    model, x = build(width)
    import numpy as np

    t: dict = {"model_built_wall": time.time()}
    start = time.perf_counter()
    failed = {}
    if name == "tiny":  # the same formats for a 64-unit model: what verifying costs besides the model
        import kerasio

        kerasio.export(model, out, reference_inputs=x, formats=FORMATS, verify=False)
        return {"params": model.count_params()}
    if name == "kerasio":
        import kerasio

        result = kerasio.export(model, out, reference_inputs=x, formats=FORMATS, verify=True)
        t["export_and_verify"] = time.perf_counter() - start
        result.report.raise_for_failure()
        t["export_by_format"] = result.seconds
        t["verify_by_format"] = {c.format: c.seconds for c in result.report.checks}
        t["onnx_layout"] = result.manifest.artifact("onnx").files
        mark = time.perf_counter()
        with kerasio.load(out, format="onnx") as loaded:
            got = loaded.run(x)["probabilities"]
        t["load_and_predict_onnx"] = time.perf_counter() - mark
        np.testing.assert_allclose(got, np.asarray(model(x)), atol=1e-5)
    else:
        import keras
        import tensorflow as tf

        ref = np.asarray(model(x))

        def timed(what, fn):
            mark = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # Keras's own call refused: its time still counts
                failed[what] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            t[what] = time.perf_counter() - mark

        timed("keras", lambda: (model.save(out / "model.keras"), np.testing.assert_allclose(
            np.asarray(keras.saving.load_model(out / "model.keras")(x)), ref, atol=1e-6)))
        def saved_model():
            model.export(str(out / "sm"), verbose=False)
            loaded = tf.saved_model.load(str(out / "sm"))  # held: its functions use its variables
            np.testing.assert_allclose(loaded.serve(x).numpy(), ref, atol=1e-6)

        timed("tf_saved_model", saved_model)

        def onnx():
            import onnxruntime as ort

            model.export(str(out / "model.onnx"), format="onnx", verbose=False)
            session = ort.InferenceSession(str(out / "model.onnx"))
            np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], ref, atol=1e-5)

        def openvino():
            import openvino as ov

            model.export(str(out / "model.xml"), format="openvino", verbose=False)
            compiled = ov.Core().compile_model(str(out / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            np.testing.assert_allclose(next(iter(compiled(x).values())), ref, atol=1e-5)

        timed("onnx", onnx)
        timed("openvino", openvino)
    t["total"] = time.perf_counter() - start
    return {"params": model.count_params(), "weights_gb": model.count_params() * 4 / 1e9, "seconds": t,
            "failed": failed}


def measure(command: list[str]) -> tuple[float, float, float]:
    """Run ``command`` as a process group: (when it started, when every process of it had exited, peak RSS GB)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=ROOT / "benchmarks", start_new_session=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    started = time.time()
    with PeakRss(proc.pid, interval=0.01) as peak:
        proc.wait()
        wait_session(proc.pid)
        ended = time.time()
    if proc.returncode:
        raise SystemExit(f"{command[:4]} failed ({proc.returncode})")
    return started, ended, peak.bytes / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=10500)
    parser.add_argument("--sides", default="keras,kerasio", help="which sides to run, in this order")
    parser.add_argument("--side")
    parser.add_argument("--out")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.side:
        Path(args.result).write_text(json.dumps(side(args.side, Path(args.out), args.width)))
        return
    sides = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sides.split(","):
            out = Path(tmp) / name
            out.mkdir()
            result = Path(tmp) / f"{name}.json"
            started, ended, rss = measure([PY, __file__, "--side", name, "--out", str(out), "--width",
                                           str(args.width), "--result", str(result)])
            data = json.loads(result.read_text())
            data["seconds_after_build"] = ended - data["seconds"]["model_built_wall"]  # the whole group, teardown too
            data["group_wall_s"], data["peak_rss_gb"] = ended - started, rss
            sides[name] = data
            print(name, json.dumps(data), file=sys.stderr, flush=True)
            if name == "kerasio":
                started, ended, verify_rss = measure([PY, "-m", "kerasio", "verify", str(out)])
                tiny = Path(tmp) / "tiny"
                tiny.mkdir()
                subprocess.run([PY, __file__, "--side", "tiny", "--out", str(tiny), "--width", "64", "--result",
                                str(Path(tmp) / "tiny.json")], check=True, stdout=subprocess.DEVNULL,
                               cwd=ROOT / "benchmarks")
                _, _, footprint = measure([PY, "-m", "kerasio", "verify", str(tiny)])
                sides["verify"] = {"group_wall_s": ended - started, "peak_rss_gb": verify_rss,
                                   "runtimes_footprint_gb": footprint, "for_the_model_gb": verify_rss - footprint}
    weights = next(iter(sides.values()))["weights_gb"]
    bound = 2 * weights + 0.1  # the model twice, and one batch of 32 rows (well under 0.1 GB)
    report("over_2gb", {"machine": machine(), "cpu": cpu_model(), "width": args.width, "weights_gb": weights,
                        "sides": sides, "verify_bound_gb": bound,
                        "verify_within_bound": sides["verify"]["for_the_model_gb"] <= bound if "verify" in sides
                        else None})


if __name__ == "__main__":
    main()
