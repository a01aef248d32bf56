"""What the untrusted-artifact audits and limits cost, side by side with kerasio 0.2 (that commit, checked out in a
temporary git worktree and run from there): `kerasio verify` of the seed bundle, each run a whole process group,
and one-row predict latency through `kerasio.load` (this version's trusted fast path: a bundle it exported here),
interleaved round by round; then what an untrusted load costs (the sandboxed, bounded worker).

    python benchmarks/bench_untrusted.py [--baseline 78ce434] [--rounds 9] [--calls 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import PY, ROOT, interleave, median, report, run_timed

LATENCY = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np, kerasio
model = kerasio.load(sys.argv[1])
x = kerasio.read_manifest(sys.argv[1]).reference_arrays(sys.argv[1])[0]
one = {k: v[:1] for k, v in x.items()}
for _ in range(50):
    kerasio.predict(model, one)
calls, times = int(sys.argv[2]), []
for _ in range(5):
    start = time.perf_counter()
    for _ in range(calls):
        kerasio.predict(model, one)
    times.append((time.perf_counter() - start) / calls)
print(json.dumps({"ms": sorted(times)[2] * 1e3, "isolated": bool(getattr(model, "isolated", False))}))
"""


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), rev], check=True,
                   capture_output=True)
    return where


def latency(code_root: Path, bundle: Path, calls: int, env: dict[str, str]) -> dict:
    out = subprocess.run([PY, "-c", LATENCY, str(bundle), str(calls)], capture_output=True, text=True, check=True,
                         cwd=code_root, env={**os.environ, **env, "PYTHONPATH": str(code_root), "TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="78ce434", help="the commit to compare with (kerasio 0.2)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        base = worktree(args.baseline, tmp_path / "base")
        try:
            env = {"KERASIO_HOME": str(tmp_path / "home")}  # this version records the bundle it exports here
            bundle = tmp_path / "seed"
            subprocess.run([PY, "-m", "kerasio", "-q", "run", "--out", str(bundle)], check=True, cwd=ROOT,
                           env={**os.environ, **env, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
            verify = interleave({
                "0.2": lambda: run_timed([PY, "-m", "kerasio", "-q", "verify", str(bundle)],
                                         {"PYTHONPATH": str(base)}, cwd=base),
                "now": lambda: run_timed([PY, "-m", "kerasio", "-q", "verify", str(bundle)],
                                         {**env, "PYTHONPATH": str(ROOT)}),
            }, args.rounds)
            verify_ratios = [n / o for n, o in zip(verify["now"], verify["0.2"])]
            runs: dict[str, list[dict]] = {"0.2": [], "now": []}
            for i in range(args.rounds):
                for name in (["0.2", "now"] if i % 2 == 0 else ["now", "0.2"]):
                    runs[name].append(latency(base if name == "0.2" else ROOT, bundle, args.calls,
                                              env if name == "now" else {}))
            old_ms = [r["ms"] for r in runs["0.2"]]
            new_ms = [r["ms"] for r in runs["now"]]
            untrusted = latency(ROOT, bundle, 200, {"KERASIO_HOME": str(tmp_path / "elsewhere")})
            report("untrusted", {
                "baseline": args.baseline, "rounds": args.rounds,
                "verify_seconds": {"0.2": median(verify["0.2"]), "now": median(verify["now"]),
                                   "median_ratio": median(verify_ratios), "target": 1.10},
                "predict_1_row_ms": {"0.2": median(old_ms), "now": median(new_ms),
                                     "median_ratio": median([n / o for n, o in zip(new_ms, old_ms)]), "target": 1.10,
                                     "now_isolated": any(r["isolated"] for r in runs["now"])},
                "untrusted_predict_1_row_ms": untrusted["ms"], "untrusted_isolated": untrusted["isolated"],
            })
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
