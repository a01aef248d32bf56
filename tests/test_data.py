"""Stage 1 and 2: the embedded data, CSV loading, every bad-data message, the split."""
from __future__ import annotations

import numpy as np
import pytest

from kerasio.errors import DataError
from kerasio.recipe import load_dataset, split_dataset
from kerasio.recipe.data import DEFAULT_DATA
from kerasio.recipe.datasets.generate import generate


def test_embedded_default_shape_and_classes():
    ds = load_dataset()
    assert ds.x.shape == (1000, 10) and ds.x.dtype == np.float32
    assert ds.n_classes == 3 and set(ds.class_names) == {"setosa", "versicolor", "virginica"}
    assert ds.source == "embedded" and ds.label == "species"
    assert sorted(np.bincount(ds.y).tolist()) == [333, 333, 334]


def test_embedded_csv_regenerates_exactly():
    assert DEFAULT_DATA.read_text(encoding="utf-8") == generate()


def test_classes_overlap_but_are_learnable():
    ds = load_dataset()
    # Nearest-centroid accuracy: clearly above chance, clearly below perfect.
    z = (ds.x - ds.x.mean(0)) / ds.x.std(0)
    centroids = np.stack([z[ds.y == c].mean(0) for c in range(3)])
    pred = np.argmin(((z[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert 0.7 < (pred == ds.y).mean() < 0.99


def test_csv_with_string_labels_keeps_order(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,cat\n3,4,dog\n5,6,cat\n7,8,bird\n")
    ds = load_dataset(path, label="label")
    assert ds.class_names == ("cat", "dog", "bird")
    assert ds.y.tolist() == [0, 1, 0, 2]
    assert ds.feature_names == ("a", "b")


def test_csv_with_numeric_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,y\n1,2\n3,0\n5,2\n")
    ds = load_dataset(path, label="y")
    assert ds.class_names == ("0", "2") and ds.y.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    "text, label, match",
    [
        pytest.param(None, "label", r"missing\.csv: no such file", id="missing-file"),
        pytest.param("", "label", r"empty\.csv: the file is empty", id="empty-file"),
        pytest.param("a,label\n", "label", r"header but no data rows", id="header-only"),
        pytest.param("a,b\n1,2\n3,4\n", "label", r"no label column 'label'; columns are \['a', 'b'\]", id="no-label"),
        pytest.param("a,b,label\n1,x,c\n2,3,d\n", "label", r"column 'b' is not numeric \(data row 1 holds 'x'\)",
                     id="non-numeric"),
        pytest.param("a,b,label\n1,2,c\n2,,d\n", "label", r"column 'b', data row 2 is NaN", id="nan"),
        pytest.param("a,b,label\n1,2,c\n2,inf,d\n", "label", r"column 'b', data row 2 is inf", id="inf"),
        pytest.param("a,label\n1,c\n2,c\n", "label", r"has 1 class \('c'\); a classifier needs at least 2", id="one-class"),
        pytest.param("a,label\n1,c\n2,\n", "label", r"label column 'label' is empty at data row 2", id="empty-label"),
    ],
)
def test_bad_csv_errors_name_file_and_place(tmp_path, text, label, match):
    name = {None: "missing.csv", "": "empty.csv"}.get(text, "bad.csv")
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        load_dataset(path, label=label)
    assert str(path) in str(info.value)


def test_class_too_small_to_stratify(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("a,label\n" + "".join(f"{i},big\n" for i in range(10)) + "99,tiny\n")
    ds = load_dataset(path)
    with pytest.raises(DataError, match=r"class 'tiny' in column 'label' has 1 row\(s\); stratifying needs at least 2"):
        split_dataset(ds, test_size=0.2, seed=0)


def test_default_split_is_800_200_stratified_and_seeded():
    ds = load_dataset()
    a, b, c = split_dataset(ds, seed=0), split_dataset(ds, seed=0), split_dataset(ds, seed=1)
    assert a.x_train.shape == (800, 10) and a.x_test.shape == (200, 10)
    assert np.array_equal(a.test_index, b.test_index)
    assert not np.array_equal(a.test_index, c.test_index)
    assert not set(a.train_index) & set(a.test_index)
    overall = np.bincount(ds.y) / len(ds)
    assert np.allclose(np.bincount(a.y_test) / 200, overall, atol=0.01)


def test_split_rejects_impossible_sizes():
    with pytest.raises(DataError, match="leaves no rows"):
        split_dataset(load_dataset(), test_size=1000)
