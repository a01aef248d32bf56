"""Input files for ``predict`` are a stranger's too: an ``.npy`` header, an ``.npz`` member, a Parquet schema and a CSV
header are checked before anything is allocated from them, through the API and the CLI."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
from hostile import assert_contained, cli

import kerasio


def _npy_claiming(path, shape):
    """An .npy whose header claims ``shape`` over 40 bytes of data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(40))
    return path


def _npz_bomb(path, mib=256):
    """An .npz whose one member inflates ~1000x: 256 MiB of zeros in a few hundred KB, written without holding them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("features.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (mib << 18, 1)})
        zeros = bytes(1 << 20)
        for _ in range(mib):
            f.write(zeros)
    return path


def _parquet_duplicates(path):
    """Two columns named ``a`` (pandas refuses to write that; pyarrow writes what it is given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["a", "a"]), path)
    return path


@pytest.mark.parametrize("make, match", [
    (lambda p: _npy_claiming(p / "x.npy", (10**9, 10)), r"x\.npy: its header claims 40000000000 bytes of data"),
    (lambda p: _npz_bomb(p / "x.npz"), r"x\.npz: array 'features\.npy' expands \d+x \(a zip bomb\?\); refusing to read"),
    (lambda p: _parquet_duplicates(p / "x.parquet"), r"x\.parquet: column 'a' appears twice"),
    (lambda p: (p / "x.csv").write_text(",".join(f"c{i}" for i in range(120_000)) + "\n") and p / "x.csv",
     r"x\.csv: 120,000 columns, over the limit of 100,000"),
    (lambda p: (p / "x.csv").write_text("a,b,a\n1,2,3\n") and p / "x.csv", r"x\.csv: column 'a' appears twice"),
], ids=["npy-shape", "npz-bomb", "parquet-duplicates", "csv-columns", "csv-duplicates"])
def test_hostile_inputs_are_refused_before_allocation(keras_bundle, tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(kerasio.errors.InputError, match=match):
        kerasio.predict(keras_bundle, path)
    assert_contained(cli("predict", str(keras_bundle), "--input", str(path)), codes=(2,), message=match)


def test_a_compressed_npz_of_real_data_still_predicts(keras_bundle, tmp_path):
    """The control: np.savez_compressed inputs (a few x) are accepted."""
    x = np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32)
    np.savez_compressed(tmp_path / "x.npz", features=x)
    assert len(kerasio.predict(keras_bundle, tmp_path / "x.npz")) == 50
