"""Stage 6 and load(): path detection, rows in every shape, clear input errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import kerasio


@pytest.fixture(scope="module")
def loaded(keras_bundle):
    return kerasio.load(keras_bundle)


@pytest.fixture(scope="module")
def reference(keras_bundle):
    x, y = kerasio.read_manifest(keras_bundle).reference_arrays(keras_bundle)
    return x["features"], y["probabilities"]


def test_load_detects_what_it_is_given(keras_bundle):
    assert kerasio.load(keras_bundle).format == "keras"
    assert kerasio.load(keras_bundle / "model.keras").format == "keras"
    sm = kerasio.load(keras_bundle / "serving" / "1")
    assert sm.format == "savedmodel" and sm.class_names == kerasio.read_manifest(keras_bundle).class_names
    assert kerasio.load(keras_bundle, format="savedmodel").format == "savedmodel"


def test_bare_artifact_outside_a_bundle(keras_bundle, tmp_path, reference):
    import shutil

    shutil.copy(keras_bundle / "model.keras", tmp_path / "m.keras")
    m = kerasio.load(tmp_path / "m.keras")
    assert m.feature_names[:2] == ["f0", "f1"] and m.class_names == ["0", "1", "2"] and m.manifest is None
    assert np.array_equal(m.run(reference[0])["probabilities"], reference[1])


def test_load_rejects_unknown_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(kerasio.errors.ArtifactError, match=r"notes\.txt: not a kerasio bundle, \.keras file"):
        kerasio.load(tmp_path / "notes.txt")
    with pytest.raises(kerasio.errors.ArtifactError, match=r"nope: no such file or directory"):
        kerasio.load(tmp_path / "nope")


def test_predict_array_dataframe_and_csv_agree(loaded, keras_bundle, reference, tmp_path):
    x, y = reference
    manifest = kerasio.read_manifest(keras_bundle)
    labels, probs = kerasio.predict(loaded, x, probabilities=True)
    assert np.array_equal(probs, y)  # the same artifact, bit for bit
    assert list(labels) == [manifest.class_names[i] for i in y.argmax(1)]
    frame = pd.DataFrame(x, columns=manifest.feature_names)
    frame.insert(0, "species", "?")  # extra columns (the label) are ignored
    frame = frame[list(reversed(frame.columns))]  # column order does not matter
    assert np.array_equal(kerasio.predict(loaded, frame), labels)
    csv = tmp_path / "rows.csv"
    frame.to_csv(csv, index=False)
    assert np.array_equal(kerasio.predict(loaded, csv), labels)
    assert kerasio.predict(loaded, x[0]).shape == (1,)  # one row as a 1-D array


def test_predict_from_bundle_path_and_memory_model(keras_bundle, pipeline, reference):
    x, y = reference
    assert np.array_equal(kerasio.predict(keras_bundle, x[:5]), kerasio.predict(kerasio.load(keras_bundle), x[:5]))
    labels, probs = kerasio.predict(pipeline.model, x, probabilities=True)
    assert np.array_equal(probs, y) and labels[0] in ("0", "1", "2")


def test_savedmodel_predictions_match_keras(keras_bundle, reference):
    x, y = reference
    _, probs = kerasio.predict(kerasio.load(keras_bundle, format="savedmodel"), x, probabilities=True)
    assert np.abs(probs - y).max() <= 1e-6


@pytest.mark.parametrize("rows, match", [
    (np.zeros((2, 9), np.float32), r"input 'features' must have shape \[None, 10\] .*Received: shape=\(2, 9\)"),
    (np.zeros((2, 11), np.float32), r"input 'features' must have shape \[None, 10\] .*Received: shape=\(2, 11\)"),
    (np.array([["a"] * 10]), r"input 'features' takes float32 numbers.*Received: dtype=<U1"),
    (np.full((1, 10), np.nan, np.float32), r"input 'features', row 0 holds NaN or inf"),
])
def test_predict_input_errors(loaded, rows, match):
    with pytest.raises(kerasio.errors.InputError, match=match):
        kerasio.predict(loaded, rows)


def test_predict_missing_column_is_named(loaded, keras_bundle, reference):
    names = kerasio.read_manifest(keras_bundle).feature_names
    frame = pd.DataFrame(reference[0], columns=names).drop(columns=["petal_width"])
    with pytest.raises(kerasio.errors.InputError, match=r"missing feature column\(s\) \['petal_width'\]"):
        kerasio.predict(loaded, frame)


def test_predict_non_numeric_csv_column(loaded, keras_bundle, reference, tmp_path):
    names = kerasio.read_manifest(keras_bundle).feature_names
    frame = pd.DataFrame(reference[0][:3], columns=names)
    frame["leaf_width"] = ["a", "b", "c"]
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(kerasio.errors.InputError, match=r"bad\.csv: column 'leaf_width' is not numeric"):
        kerasio.predict(loaded, tmp_path / "bad.csv")
