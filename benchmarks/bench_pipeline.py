"""kerasio run (keras + SavedModel, fresh-process verification) vs a hand-written Keras script.

Both do the same stages on the same data and model for 5 epochs; the Keras
script is ``benchmarks/plain_keras_pipeline.py``. Runs are interleaved and
each is a fresh process, TensorFlow import included.

    python benchmarks/bench_pipeline.py [--runs 5]
"""
import argparse
import tempfile

from _common import PY, ROOT, interleave, median, report, run_timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "kerasio run": lambda: run_timed([PY, "-m", "kerasio", "run", "--out", f"{tmp}/kerasio",
                                              "--formats", "keras,savedmodel"]),
            "plain keras script": lambda: run_timed([PY, str(ROOT / "benchmarks" / "plain_keras_pipeline.py"),
                                                     f"{tmp}/plain"]),
        }
        run_timed([PY, "-c", "import tensorflow"])  # warm the page cache for both
        times = interleave(cases, args.runs)
    k, p = median(times["kerasio run"]), median(times["plain keras script"])
    ratios = sorted(a / b for a, b in zip(times["kerasio run"], times["plain keras script"]))
    report("pipeline", {"runs": args.runs, "seconds": times, "median_kerasio_s": k, "median_plain_s": p,
                        "median_ratio": median(ratios), "target_ratio": 1.0})


if __name__ == "__main__":
    main()
