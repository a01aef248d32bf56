"""kerasio run (keras + SavedModel, fresh-process verification) vs a hand-written Keras script.

Both do the same stages on the same data and model for 5 epochs; the Keras
script is ``benchmarks/plain_keras_pipeline.py``. Runs are interleaved and
each is a fresh process group, TensorFlow import included: the clock stops
when every process the command started has exited. A separate set of
``kerasio run --json`` runs gives kerasio's own split of the time by stage.

    python benchmarks/bench_pipeline.py [--runs 7]
"""
import argparse
import json
import subprocess
import tempfile

from _common import LEFT_BEHIND, PY, ROOT, cpu_model, interleave, median, report, run_timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
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
        stages = [stage_split(f"{tmp}/split") for _ in range(3)]
    k, p = median(times["kerasio run"]), median(times["plain keras script"])
    ratios = sorted(a / b for a, b in zip(times["kerasio run"], times["plain keras script"]))
    report("pipeline", {"runs": args.runs, "cpu": cpu_model(), "seconds": times, "median_kerasio_s": k,
                        "median_plain_s": p, "median_ratio_of_medians": k / p, "median_round_ratio": median(ratios),
                        "left_processes_behind": dict(LEFT_BEHIND), "target_ratio": 0.9,
                        "kerasio_stages_s": {key: median([s[key] for s in stages]) for key in stages[0]}})


def stage_split(out: str) -> dict:
    """kerasio run's own stage timings (import, train, export+verify, predict), from its --json summary."""
    res = subprocess.run([PY, "-m", "kerasio", "run", "--out", out, "--formats", "keras,savedmodel", "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    text = res.stdout
    seconds = json.loads(text[text.index("{"):text.rindex("}") + 1])["seconds"]
    return seconds


if __name__ == "__main__":
    main()
