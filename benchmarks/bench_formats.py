"""Per format, at the seed scale: export, load and verify time and file size,
kerasio vs calling Keras (or the converter) directly.

kerasio's export includes hashing and the manifest; its load includes the sha256
check and the config audit; its verify loads and compares the reference batch
(in-process here, to time the work itself; the default fresh process adds one
interpreter start per run). Runs are interleaved; figures are medians.

    python benchmarks/bench_formats.py [--rounds 5]
"""
import argparse
import os
import pickle
import shutil
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")


from _common import median, report  # noqa: E402

import kerasio  # noqa: E402
from kerasio.bundle.fsutil import hash_artifact  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
    raise KeyError(fmt)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        result = kerasio.run_pipeline(config=kerasio.TrainConfig(epochs=2), out=tmp / "seed", verify=False, echo=None)
        model, x = result.model, result.split.x_test
        for fmt in kerasio.formats.REGISTRY:
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
                fig["kerasio_verify"].append(timed(lambda: kerasio.verify(
                    bundle, formats=fmt, in_process=True, trust=True, record=False).raise_for_failure()))
            art = kerasio.read_manifest(bundle).artifact(fmt)
            rows[fmt] = {k: round(median(v) * 1e3, 1) for k, v in fig.items()} | {
                "kerasio_bytes": art.size, "keras_bytes": hash_artifact(path)[1]}
            print(fmt, rows[fmt], flush=True)
    report("formats", {"rounds": args.rounds, "unit": "ms", "formats": rows})


if __name__ == "__main__":
    main()
