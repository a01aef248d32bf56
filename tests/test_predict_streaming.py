"""Chunked prediction: memory bounded by the chunk, not the file; output complete or absent; errors by row."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kerasio
from kerasio.errors import InputError
from kerasio.predict import predict_chunks, predict_file, predict_to_file

RSS = """
import resource, sys
from kerasio.cli import main
code = main(sys.argv[1:])
print(f"RSS_MB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}", file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def rows(pipeline, tmp_path_factory):
    """Feature rows drawn from the test split: 1,000,000 (45 MB of CSV) and 100,000."""
    folder = tmp_path_factory.mktemp("rows")
    x = pipeline.split.x_test
    names = list(pipeline.dataset.feature_names)
    index = np.random.default_rng(0).integers(0, len(x), 1_000_000)
    big = pd.DataFrame(x[index].round(3), columns=names)
    big.to_csv(folder / "rows1m.csv", index=False)
    big.iloc[:100_000].to_csv(folder / "rows100k.csv", index=False)
    return folder


def _peak_rss(bundle: Path, rows: Path, out: Path) -> float:
    proc = subprocess.run([sys.executable, "-c", RSS, "predict", str(bundle), "--input", str(rows), "--output",
                           str(out), "--in-process"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stderr.rsplit("RSS_MB=", 1)[1].split()[0])


def test_a_million_rows_predict_in_bounded_memory(keras_bundle, rows, tmp_path):
    """Ten times the rows must not cost more memory: the file is never held whole (it was: +150 MB)."""
    small = _peak_rss(keras_bundle, rows / "rows100k.csv", tmp_path / "small.csv")
    large = _peak_rss(keras_bundle, rows / "rows1m.csv", tmp_path / "large.csv")
    assert large - small < 60, f"peak RSS grew by {large - small:.0f} MB from 100k to 1M rows ({small:.0f} MB)"
    written = pd.read_csv(tmp_path / "large.csv")
    assert len(written) == 1_000_000 and list(written.columns[:2]) == ["label", "p_" + kerasio.read_manifest(
        keras_bundle).class_names[0]]
    head = pd.read_csv(rows / "rows1m.csv", nrows=1000)
    labels, probs = kerasio.load(keras_bundle).predict(head, probabilities=True)
    assert list(written["label"][:1000]) == list(labels)
    np.testing.assert_allclose(written.iloc[:1000, 1:].to_numpy(), probs, rtol=1e-6, atol=1e-7)


def test_chunks_batches_and_the_whole_file_agree(keras_bundle, rows, tmp_path):
    model = kerasio.load(keras_bundle)
    path = rows / "rows100k.csv"
    whole = model.run(pd.read_csv(path))
    for chunk_rows, batch_size in ((7_000, None), (65_536, 999), (100_000, 100_000)):
        parts = list(predict_chunks(model, path, chunk_rows=chunk_rows, batch_size=batch_size))
        assert len(parts) == -(-100_000 // chunk_rows) and parts[1 % len(parts)].first in (chunk_rows, 0)
        for name, value in whole.items():  # another batch size may take another kernel: float32 rounding apart
            np.testing.assert_allclose(np.concatenate([p.outputs[name] for p in parts]), value, rtol=1e-6, atol=1e-6)
    out = tmp_path / "p.npz"
    count, _ = predict_to_file(model, path, out, chunk_rows=30_000)
    with np.load(out) as saved:
        assert count == 100_000
        np.testing.assert_allclose(saved["probabilities"], whole["probabilities"], rtol=1e-6, atol=1e-6)
        assert saved["label"].shape == (100_000,) and saved["label"].dtype.kind == "U"


def test_parquet_and_npy_inputs_stream_too(keras_bundle, rows, tmp_path):
    frame = pd.read_csv(rows / "rows100k.csv")
    frame.to_parquet(tmp_path / "r.parquet", row_group_size=10_000)
    np.save(tmp_path / "r.npy", frame.to_numpy(np.float32))
    model = kerasio.load(keras_bundle)
    seen = []
    count, _ = predict_to_file(model, tmp_path / "r.parquet", tmp_path / "a.csv", chunk_rows=25_000,
                               progress=lambda done, total, s: seen.append((done, total)))
    assert count == 100_000 and seen[-1] == (100_000, 100_000) and len(seen) >= 4
    predict_to_file(model, tmp_path / "r.npy", tmp_path / "b.csv", chunk_rows=40_000)
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")  # other chunks: float32 rounding apart
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 100_000
    np.testing.assert_allclose(a.drop(columns="label").to_numpy(), b.drop(columns="label").to_numpy(), rtol=1e-6,
                               atol=1e-6)
    probabilities = a.drop(columns="label").to_numpy()
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-5  # a label may differ only where two classes tie within rounding
    assert (a["label"][clear] == b["label"][clear]).all() and clear.mean() > 0.99


def test_a_bad_row_deep_in_the_file_names_it_and_leaves_no_output(keras_bundle, rows, tmp_path):
    frame = pd.read_csv(rows / "rows100k.csv", dtype=str)
    frame.iloc[90_000, 3] = "n/a?"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    out = tmp_path / "out.csv"
    out.write_text("the previous predictions\n")
    proc = subprocess.run([sys.executable, "-m", "kerasio", "predict", str(keras_bundle), "--input", str(bad),
                           "--output", str(out), "--chunk-rows", "20000"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert str(bad) in proc.stderr and "data rows 80001-100000" in proc.stderr and frame.columns[3] in proc.stderr
    assert out.read_text() == "the previous predictions\n"  # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "out.csv"]  # no temporary file left


def test_a_killed_prediction_never_leaves_a_half_file_under_the_output_name(keras_bundle, rows, tmp_path):
    out = tmp_path / "out.csv"
    proc = subprocess.Popen([sys.executable, "-m", "kerasio", "predict", str(keras_bundle), "--input",
                             str(rows / "rows1m.csv"), "--output", str(out), "--in-process", "--chunk-rows", "20000",
                             "--batch-size", "500"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    temp = None
    while time.monotonic() < deadline and temp is None:  # wait until predictions are being written
        temp = next((p for p in tmp_path.glob(".out.csv.tmp-*") if p.stat().st_size > 100_000), None)
        time.sleep(0.05)
    assert temp is not None and proc.poll() is None, "the prediction never started writing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # only the hidden temporary file, never a half file under the name
    again = subprocess.run([sys.executable, "-m", "kerasio", "predict", str(keras_bundle), "--input",
                            str(rows / "rows100k.csv"), "--output", str(out), "--in-process"], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and len(pd.read_csv(out)) == 100_000


def test_stdout_streams_csv_and_json(keras_bundle, rows, tmp_path, capsys):
    from kerasio.cli import main

    small = tmp_path / "few.csv"
    pd.read_csv(rows / "rows100k.csv", nrows=25).to_csv(small, index=False)
    assert main(["predict", str(keras_bundle), "--input", str(small), "--in-process", "--chunk-rows", "10"]) == 0
    text = capsys.readouterr().out
    assert text.count("label,") == 1 and len(text.strip().splitlines()) == 26  # one header, 25 rows
    assert main(["predict", str(keras_bundle), "--input", str(small), "--in-process", "--chunk-rows", "10",
                 "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 25 and set(records[0]) >= {"label"}


def test_predict_file_keeps_its_in_memory_api(keras_bundle, rows):
    model = kerasio.load(keras_bundle)
    found = predict_file(model, rows / "rows100k.csv", chunk_rows=30_000)
    assert found.rows == 100_000 and len(found.labels) == 100_000 and len(found.columns["label"]) == 100_000
    with pytest.raises(InputError, match="no such file"):
        list(predict_chunks(model, rows / "missing.csv"))
