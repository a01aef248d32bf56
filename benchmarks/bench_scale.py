"""Scale-out figures: streamed training, chunked prediction and a 2-replica MirroredStrategy, each against the
plain-Keras way of doing the same work, in fresh process groups (peak RSS sampled over every process of the group
every 20 ms; the clock stops when the whole group has exited).

1. train    ``kerasio run --streaming`` on a generated CSV (10M rows x 10 features, about 1 GB) against plain
            Keras reading the same file into memory (pandas) and fitting on the array: peak RSS, and training
            throughput (rows per second of an epoch, validation included on both sides).
2. predict  ``kerasio predict --input BIG.csv --output OUT.csv`` (chunked) against a plain script that reads the
            same chunks with pandas and calls ``model.predict`` on each (one batch per chunk), writing the same CSV.
3. mirrored ``kerasio run --strategy mirrored --replicas 2`` against the default single device, time per epoch,
            on an in-memory slice of the same data.

    python benchmarks/bench_scale.py [--rows 10000000] [--epochs 1] [--batch-size 1024] [--rounds 1]
                                     [--parts train,predict,mirrored] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PY, ROOT, PeakRss, median, report, wait_session

PLAIN_TRAIN = r"""
import json, sys, time
import numpy as np, pandas as pd, keras
path, epochs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keras.utils.set_random_seed(0)
start = time.perf_counter()
frame = pd.read_csv(path)
y = pd.factorize(frame.pop("species"))[0].astype("int64")
x = frame.to_numpy("float32")
del frame
test = np.random.default_rng(0).random(len(x)) < 0.2
x_train, y_train, x_test, y_test = x[~test], y[~test], x[test], y[test]
del x, y
read = time.perf_counter() - start
norm = keras.layers.Normalization()
norm.adapt(x_train)
model = keras.Sequential([keras.Input((x_train.shape[1],)), norm, keras.layers.Dense(32, activation="relu"),
                          keras.layers.Dropout(0.1), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dropout(0.1), keras.layers.Dense(3, activation="softmax")])
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
times = []
class Clock(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None): times.append(time.perf_counter() - self.t)
history = model.fit(x_train, y_train, batch_size=batch, epochs=epochs, validation_data=(x_test, y_test),
                    callbacks=[Clock()], verbose=0)
print(json.dumps({"read_seconds": read, "epoch_seconds": times, "train_rows": int(len(y_train)),
                  "val_accuracy": history.history["val_accuracy"][-1]}))
"""

PLAIN_PREDICT = r"""
import sys
import numpy as np, pandas as pd, keras
bundle, path, out = sys.argv[1:4]
model = keras.saving.load_model(f"{bundle}/model.keras")
classes = np.array(["versicolor", "setosa", "virginica"])
with open(out, "w") as handle:
    for i, chunk in enumerate(pd.read_csv(path, chunksize=65536)):
        x = chunk.drop(columns=["species"]).to_numpy("float32")
        p = model.predict(x, batch_size=len(x), verbose=0)
        table = pd.DataFrame({"label": classes[p.argmax(1)], **{f"p_{c}": p[:, j] for j, c in enumerate(classes)}})
        table.to_csv(handle, index=False, header=i == 0)
"""


def make_csv(path: Path, rows: int) -> Path:
    """The embedded data's rows, drawn with replacement and jittered: ``rows`` x 10 features + species."""
    if path.is_file():
        return path
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    base = pd.read_csv(ROOT / "kerasio" / "recipe" / "datasets" / "default.csv")
    features = [c for c in base.columns if c != "species"]
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".partial")
    with pa.OSFile(str(tmp), "wb") as sink:
        writer = None
        for first in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - first)
            pick = rng.integers(0, len(base), n)
            x = base[features].to_numpy()[pick] * rng.normal(1.0, 0.02, (n, len(features)))
            table = pa.table({**{f: np.round(x[:, j], 5) for j, f in enumerate(features)},
                              "species": base["species"].to_numpy()[pick]})
            if writer is None:
                writer = pacsv.CSVWriter(sink, table.schema)
            writer.write_table(table)
        writer.close()
    tmp.rename(path)
    return path


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` in a new session; wall time until every process of it has exited, peak RSS over all of them."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}, cwd=ROOT, text=True)
    with PeakRss(proc.pid, interval=0.02) as peak:
        stdout, stderr = proc.communicate()
        left = wait_session(proc.pid)
        seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak.bytes / 2**20, "left_processes_behind": left, "stdout": stdout}


def epoch_rows_per_s(trace: list[dict], train_rows: int) -> float:
    return train_rows / median([r["seconds"] for r in trace])


def part_train(data: Path, args, out: Path) -> dict:
    runs: dict[str, list] = {"kerasio": [], "keras": []}
    for i in range(args.rounds):
        for side in (("kerasio", "keras") if i % 2 == 0 else ("keras", "kerasio")):
            if side == "kerasio":
                r = measured([PY, "-m", "kerasio", "run", "--data", str(data), "--label", "species", "--streaming",
                              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--formats",
                              "keras", "--no-verify", "--out", str(out / f"streamed-{i}"), "--json"])
                summary = json.loads(r.pop("stdout"))
                manifest = json.loads((out / f"streamed-{i}" / "kerasio.json").read_text())
                rows = manifest["training"]["data"]["rows"]
                train_rows = round(rows * 0.8)  # the hash split's train part, within a few hundred rows
                r.update(rows_per_s=epoch_rows_per_s(summary["trace"], train_rows),
                         epoch_seconds=[t["seconds"] for t in summary["trace"]],
                         val_accuracy=summary["metrics"]["test_accuracy"])
            else:
                r = measured([PY, "-c", PLAIN_TRAIN, str(data), str(args.epochs), str(args.batch_size)])
                detail = json.loads(r.pop("stdout").strip().splitlines()[-1])
                r.update(detail, rows_per_s=detail["train_rows"] / median(detail["epoch_seconds"]))
            runs[side].append(r)
            print(side, {k: v for k, v in r.items() if k != "stdout"}, file=sys.stderr, flush=True)
    k, p = runs["kerasio"], runs["keras"]
    return {"runs": runs, "throughput_ratio": median([a["rows_per_s"] / b["rows_per_s"] for a, b in zip(k, p)]),
            "kerasio_peak_rss_mb": median([a["peak_rss_mb"] for a in k]),
            "keras_peak_rss_mb": median([b["peak_rss_mb"] for b in p]),
            "kerasio_seconds": median([a["seconds"] for a in k]), "keras_seconds": median([b["seconds"] for b in p]),
            "targets": {"kerasio_peak_rss_mb": 1536, "throughput_ratio": 0.8}}


def part_predict(data: Path, args, out: Path) -> dict:
    bundle = out / "predict-bundle"
    if not (bundle / "kerasio.json").is_file():
        subprocess.run([PY, "-m", "kerasio", "-q", "run", "--out", str(bundle), "--formats", "keras", "--no-verify"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    runs: dict[str, list] = {"kerasio": [], "kerasio-sandboxed": [], "keras": []}
    for i in range(args.rounds):
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]
        for side in order:
            target = out / f"{side}.csv"
            if side == "keras":
                r = measured([PY, "-c", PLAIN_PREDICT, str(bundle), str(data), str(target)])
            else:
                r = measured([PY, "-m", "kerasio", "predict", str(bundle), "--input", str(data), "--output",
                              str(target), *([] if side == "kerasio-sandboxed" else ["--in-process"])])
            r.pop("stdout")
            rows = sum(1 for _ in open(target)) - 1
            r.update(rows=rows, rows_per_s=rows / r["seconds"])
            target.unlink()
            runs[side].append(r)
            print(side, r, file=sys.stderr, flush=True)
    ratio = {s: median([a["seconds"] / b["seconds"] for a, b in zip(runs[s], runs["keras"])])
             for s in ("kerasio", "kerasio-sandboxed")}
    return {"runs": runs, "time_ratio_vs_model_predict": ratio,
            "rows_per_s": {s: median([r["rows_per_s"] for r in v]) for s, v in runs.items()},
            "peak_rss_mb": {s: median([r["peak_rss_mb"] for r in v]) for s, v in runs.items()}}


def part_mirrored(data: Path, args, out: Path) -> dict:
    import pandas as pd

    mid = out / "mid.csv"
    if not mid.is_file():
        pd.read_csv(data, nrows=args.mirrored_rows).to_csv(mid, index=False)
    runs: dict[str, list] = {"mirrored-2": [], "default": []}
    for i in range(args.rounds):
        for side in (("mirrored-2", "default") if i % 2 == 0 else ("default", "mirrored-2")):
            extra = ["--strategy", "mirrored", "--replicas", "2"] if side == "mirrored-2" else []
            r = measured([PY, "-m", "kerasio", "run", "--data", str(mid), "--label", "species", "--epochs",
                          str(args.epochs + 1), "--batch-size", str(args.batch_size), "--formats", "keras",
                          "--no-verify", "--out", str(out / side), "--json", *extra])
            summary = json.loads(r.pop("stdout"))
            r.update(epoch_seconds=[t["seconds"] for t in summary["trace"]],
                     test_accuracy=summary["metrics"]["test_accuracy"])
            runs[side].append(r)
            print(side, r, file=sys.stderr, flush=True)

    def steady(side: str) -> float:  # every round's epochs after the first (which traces the step functions), pooled
        return median([t for r in runs[side] for t in (r["epoch_seconds"][1:] or r["epoch_seconds"])])

    seconds = {side: steady(side) for side in runs}
    return {"runs": runs, "rows": args.mirrored_rows, "epoch_seconds": seconds,
            "epoch_time_ratio_mirrored_vs_default": seconds["mirrored-2"] / seconds["default"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--mirrored-rows", type=int, default=400_000)
    parser.add_argument("--parts", default="train,predict,mirrored")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "kerasio-bench-scale"))
    args = parser.parse_args()
    folder = Path(args.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = make_csv(folder / f"rows-{args.rows}.csv", args.rows)
    made = time.perf_counter() - start
    results = {"rows": args.rows, "file_mb": data.stat().st_size / 2**20, "make_csv_seconds": made,
               "epochs": args.epochs, "batch_size": args.batch_size, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for part in args.parts.split(","):
            results[part] = {"train": part_train, "predict": part_predict, "mirrored": part_mirrored}[part](
                data, args, Path(tmp))
    report("scale", results)


if __name__ == "__main__":
    main()
