"""Start-up: ``kerasio --help`` (must not import TensorFlow) vs bare Python and vs importing Keras.

    python benchmarks/bench_startup.py [--runs 15]
"""
import argparse

from _common import PY, interleave, median, report, run_timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cases = {
        "kerasio --help": lambda: run_timed([PY, "-m", "kerasio", "--help"]),
        "python -c pass": lambda: run_timed([PY, "-c", "pass"]),
        "python -c 'import keras'": lambda: run_timed([PY, "-c", "import keras"]),
    }
    times = interleave(cases, args.runs)
    medians = {k: median(v) for k, v in times.items()}
    report("startup", {"runs": args.runs, "median_s": medians, "target_s": 0.3})


if __name__ == "__main__":
    main()
