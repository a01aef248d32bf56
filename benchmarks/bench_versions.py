"""This tree against older kerasio checkouts, side by side in one run: did a change cost any speed?

Five figures, each timed as a whole process group per version, rounds
interleaved (the versions' order reversed every other round), with each
version's own checkout first on ``sys.path`` (``cwd`` and ``PYTHONPATH``), in
the same virtualenv:

* ``kerasio --help`` start-up;
* ``kerasio run`` (keras + SavedModel, fresh-process verification), and its
  ratio to the plain-Keras script of ``bench_pipeline.py`` run in the same round;
* ``kerasio verify`` of the bundle that version's own run wrote (each version's
  default verification: from 0.4, with the shape sweep);
* one-row ``kerasio.predict`` latency on a loaded bundle (median of many calls,
  measured inside a process of each version);
* a ~300 MB model: ``export(..., formats="keras,savedmodel", verify=True)`` (``--large``).

Only calls that every version spells the same way are used (the CLI,
``load``, ``predict``, and ``export`` with ``verify=True``).

    git worktree add /tmp/kerasio-0.2 <0.2 commit>
    git worktree add /tmp/kerasio-0.3 <0.3 commit>
    python benchmarks/bench_versions.py --old /tmp/kerasio-0.2 --old /tmp/kerasio-0.3 [--rounds 5] [--large]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import LEFT_BEHIND, PY, ROOT, median, report, run_timed

PREDICT = '''
import json, sys, time
import numpy as np
import kerasio
loaded = kerasio.load(sys.argv[1])
x = kerasio.read_manifest(sys.argv[1]).reference_arrays(sys.argv[1])[0]
row = {k: v[:1] for k, v in x.items()}
for _ in range(50):
    kerasio.predict(loaded, row)
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    kerasio.predict(loaded, row)
    times.append(time.perf_counter() - start)
print(json.dumps({"file": kerasio.__file__, "ms": sorted(times)[len(times) // 2] * 1e3}))
'''

LARGE = '''
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np
import kerasio
keras.utils.set_random_seed(0)
width = int(sys.argv[2])
model = keras.Sequential([keras.Input((10,), name="features")]
                         + [keras.layers.Dense(width, activation="relu") for _ in range(5)]
                         + [keras.layers.Dense(3, activation="softmax")])
x = np.random.default_rng(0).normal(size=(200, 10)).astype("float32")
start = time.perf_counter()
result = kerasio.export(model, sys.argv[1], reference_inputs=x, formats="keras,savedmodel", verify=True)
assert result.report.ok
print(time.perf_counter() - start)
'''


def env_for(tree: Path) -> dict:
    """The checkout first on the path; bytecode caches on, as a user's install has them (this project's machines
    set PYTHONDONTWRITEBYTECODE, which makes every start compile kerasio's sources again)."""
    return {"PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": ""}


def which(tree: Path) -> str:
    out = subprocess.run([PY, "-c", "import kerasio; print(kerasio.__file__, kerasio.__version__)"], cwd=tree,
                         env={**os.environ, **env_for(tree)}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def predict_ms(tree: Path, bundle: str, calls: int) -> float:
    out = subprocess.run([PY, "-c", PREDICT, bundle, str(calls)], cwd=tree, env={**os.environ, **env_for(tree),
                         "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["file"].startswith(str(tree)), (data["file"], tree)
    return data["ms"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True, action="append", help="a checkout of an older kerasio (git worktree)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--large", action="store_true", help="also the ~300 MB model (about 30 s per version)")
    parser.add_argument("--width", type=int, default=4352)
    args = parser.parse_args()
    trees = {Path(old).resolve().name: Path(old).resolve() for old in args.old}
    trees["this tree"] = ROOT
    versions = {name: which(tree) for name, tree in trees.items()}
    kinds = ("help_s", "run_s", "run_ratio", "verify_s", "predict_1row_ms") + (("large_s",) if args.large else ())
    figures: dict[str, dict[str, list[float]]] = {k: {name: [] for name in trees} for k in kinds}
    plain: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_timed([PY, "-c", "import tensorflow"])  # warm the page cache for every case
        for i in range(args.rounds):
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            plain.append(run_timed([PY, str(ROOT / "benchmarks" / "plain_keras_pipeline.py"), f"{tmp}/plain{i}"]))
            for name in order:
                tree, env = trees[name], env_for(trees[name])
                figures["help_s"][name].append(run_timed([PY, "-m", "kerasio", "--help"], env=env, cwd=tree))
                out = f"{tmp}/{name}-run{i}"
                seconds = run_timed([PY, "-m", "kerasio", "run", "--out", out, "--formats", "keras,savedmodel"],
                                    env=env, cwd=tree)
                figures["run_s"][name].append(seconds)
                figures["run_ratio"][name].append(seconds / plain[-1])
                figures["verify_s"][name].append(run_timed([PY, "-m", "kerasio", "verify", out], env=env, cwd=tree))
                figures["predict_1row_ms"][name].append(predict_ms(tree, out, args.calls))
                if args.large:
                    start = time.perf_counter()
                    run_timed([PY, "-c", LARGE, f"{tmp}/{name}-large{i}", str(args.width)], env=env, cwd=tree)
                    figures["large_s"][name].append(time.perf_counter() - start)
    medians = {k: {name: median(v) for name, v in by.items()} for k, by in figures.items()}
    ratios = {k: {old: m["this tree"] / m[old] for old in trees if old != "this tree"} for k, m in medians.items()}
    report("versions", {"rounds": args.rounds, "versions": versions, "plain_keras_s": plain, "seconds": figures,
                        "medians": medians, "this_tree_over": ratios, "left_processes_behind": dict(LEFT_BEHIND)})


if __name__ == "__main__":
    sys.exit(main())
