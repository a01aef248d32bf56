"""kerasio.predict on a loaded bundle vs model.predict, for 1 row and 200 rows.

    python benchmarks/bench_predict.py [--calls 300]
"""
import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import kerasio  # noqa: E402
from _common import interleave, median, report  # noqa: E402


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
        result = kerasio.run_pipeline(out=f"{tmp}/b", epochs=2, verify=False, echo=None)
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
    report("predict", {"calls_per_round": args.calls, "rounds": args.rounds, **figures, "target_1_row_ms": 1.0})


if __name__ == "__main__":
    main()
