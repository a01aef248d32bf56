"""kerasio.predict on a loaded bundle vs model.predict: the seed classifier (1 and 200 rows) and the model zoo (1 row).

    python benchmarks/bench_predict.py [--calls 300] [--rounds 7]
"""
import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _common import interleave, median, report  # noqa: E402

import kerasio  # noqa: E402


def per_call(fn, calls: int) -> float:
    fn()  # warm
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = kerasio.run_pipeline(config=kerasio.TrainConfig(epochs=2), out=f"{tmp}/b", verify=False, echo=None)
        loaded = kerasio.load(result.bundle)
        keras_model = loaded.model  # the same reloaded .keras model, called the plain way
        x200 = result.split.x_test
        figures = {}
        for rows in (1, 200):
            x = x200[:rows]
            slow_calls = max(args.calls // 10, 20)
            times = interleave({
                "kerasio.predict": lambda: per_call(lambda: kerasio.predict(loaded, x), args.calls),
                "model.predict": lambda: per_call(lambda: keras_model.predict(x, verbose=0), slow_calls),
            }, args.rounds)
            k, m = median(times["kerasio.predict"]), median(times["model.predict"])
            same = np.array_equal(kerasio.predict(loaded, x, probabilities=True)[1], keras_model.predict(x, verbose=0))
            figures[f"{rows}_rows"] = {"kerasio_ms": k * 1e3, "model_predict_ms": m * 1e3, "speedup": m / k,
                                       "outputs_identical": bool(same)}
        figures["zoo_1_row"] = zoo_table(tmp, args)
    report("predict", {"calls_per_round": args.calls, "rounds": args.rounds, **figures, "target_1_row_ms": 1.0})


def zoo_table(tmp: str, args) -> dict:
    """One row through each zoo kind: kerasio.predict on the loaded .keras bundle vs model.predict on the same model."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import tensorflow as tf
    import zoo

    table = {}
    for name, build in zoo.ZOO.items():
        model, x = build()
        out = f"{tmp}/zoo-{name}"
        kerasio.export(model, out, reference_inputs=x, formats="keras")
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")  # untrained zoo models
        loaded = kerasio.load(out)
        one = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
        # model.predict refuses numpy string arrays ("Invalid dtype: str768"): a Keras user must pass a tensor.
        plain = tf.constant(one) if getattr(one, "dtype", None) is not None and one.dtype.kind == "U" else one
        slow_calls = max(args.calls // 10, 20)
        times = interleave({
            "kerasio.predict": lambda: per_call(lambda: kerasio.predict(loaded, one), args.calls),
            "model.predict": lambda: per_call(lambda: loaded.model.predict(plain, verbose=0), slow_calls),
        }, args.rounds)
        k, m = median(times["kerasio.predict"]), median(times["model.predict"])
        table[name] = {"task": loaded.task.kind, "kerasio_ms": k * 1e3, "model_predict_ms": m * 1e3,
                       "speedup": m / k, "under_1_ms": k * 1e3 <= 1.0}
        print(f"{name:18s} {loaded.task.kind:15s} kerasio {k * 1e3:7.3f} ms   model.predict {m * 1e3:7.2f} ms",
              flush=True)
    return table


if __name__ == "__main__":
    main()
