"""Per format, at the seed scale: export, load and verify time and file size,
kerasio vs calling Keras (or the converter) directly, and each runtime's one-row
predict latency through kerasio.

kerasio's export includes hashing and the manifest; its load includes the sha256
check and the config audit; its verify loads and compares the reference batch
(in-process here, to time the work itself; the default fresh process adds one
interpreter start per run). The library's own calls: Keras's ``model.save`` and
``model.export(format=...)`` (``torch`` in a PyTorch subprocess, as kerasio
writes it in a PyTorch worker), the LiteRT converter with its quantization
options, onnxruntime's ``quantize_dynamic``/``quantize_static`` on Keras's own
ONNX, and ``model.quantize`` on a copy. Runs are interleaved; figures are medians.

    python benchmarks/bench_formats.py [--rounds 5] [--formats onnx,openvino]
"""
import argparse
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")


import numpy as np  # noqa: E402
from _common import median, report  # noqa: E402

import kerasio  # noqa: E402
from kerasio.bundle.fsutil import hash_artifact  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _checked(report):
    """A full-precision artifact must pass; a quantized one must have run (its gates may say FAIL)."""
    if any(c.quantization is None or c.error for c in report.failures()):
        report.raise_for_failure()
    return report


def direct(model, x, fmt, tmp: Path):
    """Plain Keras / converter calls for one format: returns (save_fn, load_fn, path)."""
    import keras
    import tensorflow as tf

    if fmt == "keras":
        p = tmp / "m.keras"
        return lambda: model.save(p), lambda: keras.models.load_model(p)(x), p
    if fmt == "h5":
        p = tmp / "m.h5"
        return lambda: model.save(p), lambda: keras.models.load_model(p)(x), p
    if fmt == "weights":
        p = tmp / "m.weights.h5"
        return (lambda: model.save_weights(p),
                lambda: (lambda m: (m.load_weights(p), m(x)))(keras.models.clone_model(model)), p)
    if fmt == "savedmodel":
        p = tmp / "sm"
        return (lambda: (shutil.rmtree(p, ignore_errors=True), model.export(p, verbose=False)),
                lambda: (lambda m: m.serve(x))(tf.saved_model.load(str(p))), p)
    if fmt == "onnx":
        import onnxruntime as ort

        p = tmp / "m.onnx"
        # Keras's own ONNX export leaves the Normalization statistics as unbound
        # graph inputs, so only the load is timed against it, not a run.
        return lambda: model.export(p, format="onnx", verbose=False), lambda: ort.InferenceSession(str(p)), p
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        p = tmp / "m.tflite"

        def load():
            it = Interpreter(model_path=str(p))
            it.resize_tensor_input(0, list(x.shape))
            it.allocate_tensors()
            it.set_tensor(it.get_input_details()[0]["index"], x)
            it.invoke()
        return lambda: model.export(p, format="litert", verbose=False), load, p
    if fmt == "pickle":
        p = tmp / "m.pkl"
        return (lambda: p.write_bytes(pickle.dumps(model)), lambda: pickle.loads(p.read_bytes())(x), p)
    if fmt == "openvino":
        import openvino as ov

        p = tmp / "m.xml"
        return (lambda: model.export(str(p), format="openvino", verbose=False),
                lambda: ov.Core().compile_model(str(p), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x), p)
    if fmt == "torch":
        p, source = tmp / "m.pt2", tmp / "for_torch.keras"
        model.save(source)
        code = ("import os, sys; os.environ['KERAS_BACKEND'] = 'torch'; import keras, torch; "
                "m = keras.saving.load_model(sys.argv[1]); m.export(sys.argv[2], format='torch', verbose=False)")
        load = ("import sys, numpy as np, torch; p = torch.export.load(sys.argv[1]).module(); "
                "p(torch.from_numpy(np.load(sys.argv[2])[:1]))")
        np.save(tmp / "x.npy", x)
        return (lambda: subprocess.run([sys.executable, "-c", code, str(source), str(p)], check=True),
                lambda: subprocess.run([sys.executable, "-c", load, str(p), str(tmp / "x.npy")], check=True), p)
    if fmt in ("litert-fp16", "litert-int8"):
        from ai_edge_litert.interpreter import Interpreter

        p = tmp / f"m-{fmt}.tflite"

        def convert():
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if fmt == "litert-fp16":
                converter.target_spec.supported_types = [tf.float16]
            else:
                converter.representative_dataset = lambda: ([row[None]] for row in x[:256])
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            p.write_bytes(converter.convert())
        return convert, lambda: Interpreter(model_path=str(p)).get_signature_runner()(**{"features": x[:1]}), p
    if fmt in ("onnx-int8", "onnx-int8-static"):
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static

        source, p = tmp / "for_quant.onnx", tmp / f"m-{fmt}.onnx"

        class Rows(CalibrationDataReader):
            def __init__(self):
                self.rows = iter([{"features": row[None]} for row in x[:256]])

            def get_next(self):
                return next(self.rows, None)

        def quantize():
            model.export(source, format="onnx", verbose=False)
            if fmt == "onnx-int8":
                quantize_dynamic(str(source), str(p), weight_type=QuantType.QInt8)
            else:  # Keras's graph leaves Normalization's statistics as unbound inputs: calibration cannot run it,
                fixed = tmp / "float_fixed.onnx"  # so it calibrates on a correct float graph (kerasio's writer)
                if not fixed.exists():
                    from kerasio.formats import ExportContext, get_format
                    from kerasio.spec.iospec import derive_iospec
                    from kerasio.spec.task import resolve_task

                    spec = derive_iospec(model)
                    get_format("onnx").save(model, fixed, ExportContext(iospec=spec, task=resolve_task("raw", spec),
                                                                        reference_inputs={"features": x}))
                quantize_static(str(fixed), str(p), Rows(), weight_type=QuantType.QInt8)
        return quantize, lambda: ort.InferenceSession(str(p)), p
    if fmt.startswith("keras-"):
        p = tmp / f"m-{fmt}.keras"

        def quantize():
            copy = keras.models.clone_model(model)
            copy.set_weights(model.get_weights())
            copy.quantize(fmt.split("-", 1)[1])
            copy.save(p)
        return quantize, lambda: keras.models.load_model(p)(x), p
    raise KeyError(fmt)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--formats", default=",".join(kerasio.formats.REGISTRY))
    parser.add_argument("--calls", type=int, default=200, help="one-row predictions timed per format")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        result = kerasio.run_pipeline(config=kerasio.TrainConfig(epochs=2), out=tmp / "seed", verify=False, echo=None)
        model, x = result.model, result.split.x_test
        for fmt in args.formats.split(","):
            fig = {k: [] for k in ("kerasio_export", "keras_save", "kerasio_load", "keras_load", "kerasio_verify")}
            for i in range(args.rounds):
                bundle = tmp / f"k-{fmt}-{i}"
                save_fn, load_fn, path = direct(model, x, fmt, tmp)
                steps = [
                    ("kerasio_export", lambda: kerasio.export(model, bundle, reference_inputs=x, formats=fmt, trust=True)),
                    ("keras_save", save_fn),
                ]
                for name, fn in (steps if i % 2 == 0 else steps[::-1]):
                    fig[name].append(timed(fn))
                steps = [
                    ("kerasio_load", lambda: kerasio.load(bundle, format=fmt, trust=True).run(x)),
                    ("keras_load", load_fn),
                ]
                for name, fn in (steps if i % 2 == 0 else steps[::-1]):
                    fig[name].append(timed(fn))
                fig["kerasio_verify"].append(timed(lambda: _checked(kerasio.verify(
                    bundle, formats=fmt, in_process=True, trust=True, record=False))))
            art = kerasio.read_manifest(bundle).artifact(fmt)
            with kerasio.load(bundle, format=fmt, trust=True) as loaded:  # one row through the runtime
                row = x[:1]
                for _ in range(20):
                    loaded.run(row)
                calls = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    loaded.run(row)
                    calls.append(time.perf_counter() - start)
            rows[fmt] = {k: round(median(v) * 1e3, 1) for k, v in fig.items()} | {
                "kerasio_predict_1row_ms": round(median(calls) * 1e3, 3), "runtime": loaded.runner.runtime,
                "kerasio_bytes": art.size, "keras_bytes": hash_artifact(path)[1]}
            print(fmt, rows[fmt], flush=True)
    report("formats", {"rounds": args.rounds, "unit": "ms", "formats": rows})


if __name__ == "__main__":
    main()
