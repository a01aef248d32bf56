"""Any Keras model: a zoo of real model kinds, each exported in every format, verified, reloaded and predicted.

As Keras's own saving tests do, the same round trip runs over every kind. Each
format is either verified (against independently computed outputs) or skipped
with the reason asserted; nothing ends in a raw exception.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zoo

import kerasio
from kerasio.cli import main
from kerasio.formats import REGISTRY

H5_SUBCLASSED = "HDF5 (.h5) cannot rebuild a subclassed model"
TEXT = {"h5": "HDF5 (.h5) does not keep the vocabulary of StringLookup, TextVectorization",
        "weights": "a .weights.h5 file does not hold the vocabulary of StringLookup, TextVectorization",
        "onnx": "tf2onnx cannot convert TensorFlow's string and lookup-table ops",
        "litert": "LiteRT has no string tensors",
        "openvino": "OpenVINO's core opsets have no string or lookup-table ops",
        "torch": "PyTorch has no string tensors"}
# ONNX converts it (Keras's route); torch.export cannot keep its time axis dynamic
RNN = {"litert": "LiteRT's builtins cannot run Keras 3's recurrent loop (LSTM)",
       "torch": "its converter failed: ValueError: torch.export cannot keep every None axis of the signature dynamic"}
# kind: (expected task, {format: start of the skip reason})
EXPECTED = {
    "mlp": ("classification", {}),
    "cnn": ("classification", {}),
    "text": ("classification", TEXT),
    "multi_input": ("regression", {}),
    "two_heads": ("raw", {}),
    "regression": ("regression", {}),
    "subclassed": ("classification", {"h5": H5_SUBCLASSED}),
    "lstm": ("classification", RNN),
    "mixed_float16": ("classification", {"litert": "LiteRT has no float16 MatMul/BiasAdd builtins"}),
    "batchnorm_dropout": ("classification", {}),
}


@pytest.fixture(scope="module", params=sorted(zoo.ZOO))
def exported(request, tmp_path_factory):
    """Each zoo kind exported with formats='all' (pickle trusted), verified in fresh processes before publishing."""
    model, x = zoo.ZOO[request.param]()
    out = tmp_path_factory.mktemp(request.param) / "bundle"
    result = kerasio.export(model, out, reference_inputs=x, formats="all", trust=True, verify=True)
    report = result.report
    return request.param, model, x, out, result, report


def test_every_format_is_verified_or_skipped_with_its_reason(exported):
    kind, _, _, out, result, report = exported
    task, skips = EXPECTED[kind]
    manifest = kerasio.read_manifest(out)
    assert manifest.task.kind == task
    assert set(result.skipped) == set(skips)
    for fmt, reason in skips.items():
        assert result.skipped[fmt].startswith(reason), (fmt, result.skipped[fmt])
        assert manifest.skipped[fmt] == result.skipped[fmt]
    written = {a.format for a in manifest.artifacts}
    assert written == {n for n, f in REGISTRY.items() if not f.quantized} - set(skips)
    assert report.ok, report.table()
    assert {c.format for c in report.checks} == written
    zoo.assert_swept(manifest, report)
    for fmt in skips:  # the export table shows each skip and its reason
        assert f"skipped: {result.skipped[fmt][:30]}" in result.table()


def test_reloaded_outputs_match_the_model_within_tolerance(exported):
    kind, model, x, out, _, report = exported
    manifest = kerasio.read_manifest(out)
    expected = zoo.eager_outputs(model, x)
    for art in manifest.artifacts:
        loaded = kerasio.load(out, format=art.format, trust=True)
        got = loaded.run(x)
        assert list(got) == manifest.iospec.output_names
        check = next(c for c in report.checks if c.format == art.format)
        for spec in manifest.iospec.outputs:
            ref = expected.get(spec.name, expected.get(None))
            diff = np.abs(got[spec.name].astype(np.float64) - ref.astype(np.float64))
            # The stored reference comes from the traced graph; an eager call may round differently (~6e-8).
            bound = check.atol + 1e-6 + (check.rtol + 1e-6) * np.abs(ref)
            assert (diff <= bound).all(), (kind, art.format, spec.name, diff.max())


def test_savedmodel_keeps_the_models_input_names_and_dtypes(exported):
    kind, model, x, out, _, _ = exported
    manifest = kerasio.read_manifest(out)
    sig = manifest.artifact("savedmodel").info["signatures"]["serving_default"]
    assert {k: v["dtype"] for k, v in sig["inputs"].items()} == {s.name: s.dtype for s in manifest.iospec.inputs}
    assert set(manifest.iospec.output_names) <= set(sig["outputs"])
    assert "output_0" not in sig["outputs"] or "output_0" in manifest.iospec.output_names
    if manifest.task.is_classification:
        assert sig["outputs"]["class_id"]["dtype"] == "int64"
        assert "predict_labels" in manifest.artifact("savedmodel").info["signatures"]
    else:
        assert "class_id" not in sig["outputs"]
        assert "predict_labels" not in manifest.artifact("savedmodel").info["signatures"]


def test_predict_through_the_api(exported):
    kind, model, x, out, _, _ = exported
    loaded = kerasio.load(out)
    prediction = kerasio.predict(loaded, x)
    if loaded.task.is_classification:
        assert prediction.dtype.kind == "U" and len(prediction) == len(next(iter(loaded.run(x).values())))
        assert set(prediction) <= set(loaded.class_names)
    elif len(loaded.iospec.outputs) > 1:
        assert set(prediction) == set(loaded.iospec.output_names)
    else:
        assert isinstance(prediction, np.ndarray)


def test_predict_through_the_cli(exported, tmp_path, capsys):
    kind, model, x, out, _, _ = exported
    loaded = kerasio.load(out)
    arrays = x if isinstance(x, dict) else {loaded.iospec.input_names[0]: x}
    np.savez(tmp_path / "in.npz", **arrays)
    assert main(["predict", str(out), "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz", allow_pickle=False) as z:
        for name, value in loaded.run(x).items():
            np.testing.assert_array_equal(z[name], value)
    capsys.readouterr()
    assert main(["predict", str(out), "--input", str(tmp_path / "in.npz"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(next(iter(arrays.values())))
    if loaded.task.is_classification:
        assert "label" in rows[0]
    assert main(["verify", str(out), "--in-process", "--trust-pickle", "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["ok"] and len(verified["checks"]) == len(kerasio.read_manifest(out).artifacts)


def test_inspect_shows_signature_task_and_skips(exported, capsys):
    kind, _, _, out, result, _ = exported
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    manifest = kerasio.read_manifest(out)
    assert f"task {manifest.task.kind}" in text
    for spec in manifest.iospec.inputs + manifest.iospec.outputs:
        assert spec.describe() in text
    for fmt, why in result.skipped.items():
        assert f"skipped: {why[:40]}" in text


def test_explicitly_named_format_that_cannot_carry_the_model_is_an_error(tmp_path, capsys):
    model, x = zoo.text()
    with pytest.raises(kerasio.errors.UnsupportedFormatError,
                       match=r"format 'litert' cannot carry this model: LiteRT has no string tensors.*"
                             r"Received: formats='keras,litert'"):
        kerasio.export(model, tmp_path / "b", reference_inputs=x, formats="keras,litert")
    assert not (tmp_path / "b" / "kerasio.json").exists()


def test_text_model_csv_predict_and_string_reference_arrays(tmp_path, capsys):
    model, x = zoo.text()
    out = tmp_path / "b"
    kerasio.export(model, out, info=kerasio.BundleInfo(class_names=["negative", "positive"]), reference_inputs=x)
    with np.load(out / "reference_inputs.npz", allow_pickle=False) as z:  # strings stored without pickle
        assert z["review"].dtype.kind == "U" and z["review"][0, 0] == "a great movie"
    pd.DataFrame({"review": ["great acting", "the worst"]}).to_csv(tmp_path / "r.csv", index=False)
    assert main(["predict", str(out), "--input", str(tmp_path / "r.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "label,p_positive" and lines[1].split(",")[0] in ("negative", "positive")


def test_regression_predicts_values_in_columns_named_after_the_output(tmp_path, capsys):
    model, x = zoo.regression()
    out = tmp_path / "b"
    kerasio.export(model, out, reference_inputs=pd.DataFrame(x, columns=list("abcde")))
    manifest = kerasio.read_manifest(out)
    assert manifest.feature_names == list("abcde")  # the DataFrame's columns became the feature names
    with pytest.raises(kerasio.errors.InputError, match=r"class_names were given but the model's outputs"):
        kerasio.export(model, tmp_path / "c", info=kerasio.BundleInfo(class_names=["a"]), reference_inputs=x)
    pd.DataFrame(x[:3], columns=list("abcde"))[list("edcba")].to_csv(tmp_path / "r.csv", index=False)  # by name
    assert main(["predict", str(out), "--input", str(tmp_path / "r.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "price"
    values = np.array([float(v) for v in lines[1:]])
    np.testing.assert_allclose(values, np.asarray(model(x[:3]))[:, 0], rtol=1e-6)
    assert 2e5 < values.mean() < 3e5
    pd.DataFrame(x[:3], columns=list("abcde")).to_parquet(tmp_path / "r.parquet")  # the parquet extra (pyarrow)
    assert main(["predict", str(out), "--input", str(tmp_path / "r.parquet"), "--output", str(tmp_path / "p.csv")]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")["price"], values, rtol=1e-7)


def test_multi_input_accepts_dict_list_and_dataframe_columns(tmp_path):
    model, x = zoo.multi_input()
    out = tmp_path / "b"
    kerasio.export(model, out, reference_inputs=x, formats="keras")
    loaded = kerasio.load(out)
    by_dict = loaded.predict(x)
    np.testing.assert_array_equal(loaded.predict([x["numeric"], x["item_id"]]), by_dict)
    np.testing.assert_array_equal(loaded.predict({"numeric": x["numeric"], "item_id": x["item_id"][:, 0]}), by_dict)
    with pytest.raises(kerasio.errors.InputError, match=r"missing input\(s\) \['item_id'\].*Received: keys=\['numeric'\]"):
        loaded.predict({"numeric": x["numeric"]})
    with pytest.raises(kerasio.errors.InputError, match=r"input 'item_id' takes integers \(int32\); the data has fractions"):
        loaded.predict({"numeric": x["numeric"], "item_id": x["item_id"] + 0.5})


def test_subclassed_model_with_explicit_input_signature(tmp_path):
    model, x = zoo.subclassed()
    spec = kerasio.TensorSpec("measurements", "float32", (None, 7))
    out = tmp_path / "b"
    result = kerasio.export(model, out, reference_inputs=x, input_signature=[spec], formats="keras,savedmodel")
    assert result.manifest.iospec.input_names == ["measurements"]
    assert result.manifest.iospec.model_kind == "subclassed"
    with pytest.raises(kerasio.errors.InputError, match=r"is a subclassed keras.Model.*Pass reference_inputs=.*"
                                                 r"input_signature="):
        kerasio.spec.iospec.derive_iospec(model)
    assert kerasio.verify(out, record=False).ok


def test_custom_class_in_main_gets_a_clear_message(tmp_path):
    """A class defined in a notebook or script cannot be imported by a fresh verifying process."""
    import keras

    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    Doubler.__module__ = "__main__"
    keras.saving.register_keras_serializable(package="kerasio_main_test")(Doubler)
    inp = keras.Input((3,), name="x")
    model = keras.Model(inp, keras.layers.Dense(2, name="y")(Doubler()(inp)))
    out = tmp_path / "b"
    kerasio.export(model, out, reference_inputs=np.ones((4, 3), np.float32), formats="keras,savedmodel")
    report = kerasio.verify(out, record=False)
    keras_check = next(c for c in report.checks if c.format == "keras")
    assert not keras_check.passed
    assert "defined in __main__ (a script or a notebook cell), which a fresh verifying process cannot import" \
        in keras_check.error and "--in-process" in keras_check.error and "--import MODULE" in keras_check.error
    assert next(c for c in report.checks if c.format == "savedmodel").passed  # a SavedModel needs no Python class
    assert kerasio.verify(out, in_process=True, record=False).ok


def test_tensor_outputs_go_to_npz_and_a_table_is_refused_clearly(tmp_path, capsys):
    import keras

    inp = keras.Input((4, 4, 1), name="image")
    model = keras.Model(inp, keras.layers.Conv2D(2, 3, padding="same", name="mask")(inp))
    x = np.random.default_rng(0).random((3, 4, 4, 1)).astype("float32")
    out = tmp_path / "b"
    assert kerasio.export(model, out, reference_inputs=x, formats="keras").manifest.task.kind == "raw"
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(out), "--input", str(tmp_path / "x.npy")]) == 2
    assert "have more than 2 dimensions and cannot be printed as a table; pass --output FILE.npz" \
        in capsys.readouterr().err
    assert main(["predict", str(out), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "o.csv")]) == 2
    assert "cannot be a CSV table; write them to an .npz file instead" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
    assert main(["predict", str(out), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz", allow_pickle=False) as z:
        np.testing.assert_allclose(z["mask"], np.asarray(model(x)), rtol=1e-6, atol=1e-7)
