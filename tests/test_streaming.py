"""Streaming data: files read chunk by chunk, a hash split per row, bad rows found mid-stream by row number."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kerasio
from kerasio.errors import DataError
from kerasio.recipe.data import DEFAULT_DATA
from kerasio.recipe.stream import StreamingDataset, row_hash, should_stream

CHUNK = 64 << 10  # 64 KiB parsed at a time: the 50,000-row file below is about 60 blocks
ROWS = 7_000  # rows per chunk read back from the spool: 8 chunks


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    """The embedded data 50 times over, with noise so that rows differ: 50,000 rows, about 4 MB."""
    frame = pd.read_csv(DEFAULT_DATA)
    big = pd.concat([frame] * 50, ignore_index=True)
    features = [c for c in big.columns if c != "species"]
    noise = np.random.default_rng(7).normal(0, 0.05, (len(big), len(features)))
    big[features] = (big[features].to_numpy() + noise).round(4)
    path = tmp_path_factory.mktemp("stream") / "big.csv"
    big.to_csv(path, index=False)
    return path


def test_streamed_split_is_the_same_on_every_run_and_any_chunking(big_csv):
    assert big_csv.stat().st_size > 50 * CHUNK
    first = kerasio.recipe.split_dataset(kerasio.recipe.load_dataset(big_csv, label="species", streaming=True, chunk_bytes=CHUNK,
                                                       chunk_rows=ROWS))
    again = kerasio.recipe.split_dataset(kerasio.recipe.load_dataset(big_csv, label="species", streaming=True,
                                                       chunk_bytes=3 * CHUNK + 17, chunk_rows=3 * ROWS + 17))
    assert np.array_equal(first.test_index(), again.test_index())
    assert np.array_equal(first.mean, again.mean) or np.allclose(first.mean, again.mean, rtol=1e-6)
    assert first.n_train + first.n_test == 50_000 and abs(first.n_test / 50_000 - 0.2) < 0.01
    other = kerasio.recipe.split_dataset(kerasio.recipe.load_dataset(big_csv, label="species", streaming=True, chunk_bytes=CHUNK),
                                  seed=1)
    assert not np.array_equal(first.test_index(), other.test_index())  # the seed moves rows


def test_streamed_rows_statistics_and_labels_match_the_in_memory_reader(big_csv):
    whole = kerasio.recipe.load_dataset(big_csv, label="species")
    streamed = kerasio.recipe.load_dataset(big_csv, label="species", streaming=True, chunk_bytes=CHUNK, chunk_rows=ROWS)
    assert isinstance(streamed, StreamingDataset)
    assert len(list(streamed.chunks())) == 8
    assert (streamed.class_names, streamed.feature_names, streamed.sha256, len(streamed)) == \
        (whole.class_names, whole.feature_names, whole.sha256, len(whole))
    x = np.concatenate([c[1] for c in streamed.chunks()])
    y = np.concatenate([c[2] for c in streamed.chunks()])
    assert np.array_equal(x, whole.x) and np.array_equal(y, whole.y)
    split = kerasio.recipe.split_dataset(streamed)
    train = np.setdiff1d(np.arange(len(whole)), split.test_index())
    np.testing.assert_allclose(split.mean, whole.x[train].astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(split.variance, whole.x[train].astype(np.float64).var(axis=0), rtol=1e-5)
    assert np.array_equal(split.x_test, whole.x[split.test_index()[:500]])


def test_parquet_streams_like_the_csv(big_csv, tmp_path):
    parquet = tmp_path / "big.parquet"
    pd.read_csv(big_csv).to_parquet(parquet, row_group_size=7_000)
    a = kerasio.recipe.split_dataset(kerasio.recipe.load_dataset(big_csv, label="species", streaming=True, chunk_bytes=CHUNK))
    b = kerasio.recipe.split_dataset(kerasio.recipe.load_dataset(parquet, label="species", streaming=True, chunk_bytes=CHUNK))
    assert b.data.class_names == a.data.class_names
    assert np.array_equal(a.test_index(), b.test_index()) and np.allclose(a.mean, b.mean)


def test_numeric_labels_are_sorted_classes_as_in_memory(tmp_path):
    path = tmp_path / "numeric.csv"
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(3000, 3)), columns=["a", "b", "c"])
    frame["label"] = rng.choice([2, 10, 1], size=3000)
    frame.to_csv(path, index=False)
    whole = kerasio.recipe.load_dataset(path)
    streamed = kerasio.recipe.load_dataset(path, streaming=True, chunk_bytes=4096, chunk_rows=500)
    assert streamed.class_names == whole.class_names == ("1", "2", "10")
    assert np.array_equal(np.concatenate([c[2] for c in streamed.chunks()]), whole.y)


@pytest.mark.parametrize("row, column, value, message", [
    (40_000, "petal_width", "abc", "column 'petal_width' is not numeric (data row 40000 holds 'abc')"),
    (30_001, "sepal_length", "", "column 'sepal_length', data row 30001 is NaN (missing)"),
    (49_999, "leaf_width", "inf", "column 'leaf_width', data row 49999 is inf"),
    (45_000, "species", "", "label column 'species' is empty at data row 45000"),
])
def test_bad_rows_deep_in_the_file_are_named_by_row(big_csv, tmp_path, row, column, value, message):
    frame = pd.read_csv(big_csv, dtype=str, keep_default_na=False)
    frame.loc[row - 1, column] = value
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError) as caught:
        kerasio.recipe.load_dataset(bad, label="species", streaming=True, chunk_bytes=CHUNK)
    assert str(bad) in str(caught.value) and message in str(caught.value)
    proc = subprocess.run([sys.executable, "-m", "kerasio", "run", "--data", str(bad), "--label", "species",
                           "--streaming", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # a bad file creates nothing


def test_the_spool_is_binary_private_and_deleted(big_csv, tmp_path):
    from kerasio.recipe.stream import load_streaming

    data = load_streaming(big_csv, label="species", chunk_bytes=CHUNK, spool_dir=tmp_path)
    spool = data.spool.path
    assert spool.parent == tmp_path and oct(spool.stat().st_mode & 0o777) == "0o700"
    assert data.spool.x.stat().st_size == 50_000 * 10 * 4 and data.spool.y.stat().st_size == 50_000 * 4
    data.close()
    assert not spool.exists()
    with pytest.raises(DataError, match="was closed"):
        next(data.chunks())
    again = load_streaming(big_csv, label="species", chunk_bytes=CHUNK, spool_dir=tmp_path)
    path = again.spool.path
    del again  # the spool goes with the dataset
    import gc

    gc.collect()
    assert not path.exists()


def test_a_full_disk_while_spooling_is_a_clear_error(big_csv, tmp_path):
    from kerasio.recipe.stream import load_streaming

    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode()[:200]}")
    try:
        with pytest.raises(DataError) as caught:
            load_streaming(big_csv, label="species", chunk_bytes=CHUNK, spool_dir=full)
        assert "cannot spool its checked rows" in str(caught.value) and "No space left" in str(caught.value)
        assert list(full.iterdir()) == []  # the partial spool is gone
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_streamed_pipeline_exports_verifies_and_repeats_exactly(big_csv, tmp_path):
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("kerasio-stream-*"))
    runs = [kerasio.run_pipeline(big_csv, config=kerasio.TrainConfig(epochs=2, batch_size=256), label="species",
                                 out=tmp_path / f"b{i}", formats="keras", verify=i == 0, echo=None,
                                 run=kerasio.recipe.RunOptions(streaming=True, chunk_bytes=CHUNK))
            for i in range(2)]
    assert runs[0].report.ok and runs[0].report.checks[0].format == "keras"
    for a, b in zip(runs[0].model.get_weights(), runs[1].model.get_weights()):
        assert np.array_equal(a, b)  # same seed, same machine: the same weights
    assert runs[0].metrics["test_accuracy"] > 0.8
    data = kerasio.read_manifest(tmp_path / "b0").training["data"]
    assert data["streaming"] and data["split"] == "hash" and data["rows"] == 50_000
    assert len(runs[0].trace.records) == 2
    assert set(Path(tempfile.gettempdir()).glob("kerasio-stream-*")) <= before  # the spools are gone


def test_files_over_the_threshold_stream_without_being_asked(big_csv):
    assert should_stream(big_csv, None, threshold=1 << 20)
    assert not should_stream(big_csv, None)  # 4 MB is under the default 1 GB
    assert not should_stream(big_csv, False, threshold=1)


def test_row_hash_is_uniform_and_seeded():
    u = row_hash(0, np.arange(200_000, dtype=np.uint64))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert abs((u < 0.2).mean() - 0.2) < 0.005
    assert not np.array_equal(u[:100], row_hash(1, np.arange(100, dtype=np.uint64)))
