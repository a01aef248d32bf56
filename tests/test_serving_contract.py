"""The SavedModel's contract with TF Serving, tested with TF Serving's own pieces.

The TF Serving binary cannot be installed from the package registries this
project reaches, so ``tests/serving_contract.py`` checks every promise it relies
on (version layout, signature names/dtypes/shapes via ``saved_model_cli``, the
warmup TFRecord of ``PredictionLog``s, a REST ``instances`` body) in a fresh
process that imports neither kerasio nor Keras (``import tensorflow`` would pull
in Keras 3, so the script replaces every ``keras`` module with an empty stub,
as TF Serving's C++ runtime has no Python Keras either).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import kerasio
from kerasio.cli import main
from kerasio.formats.tf_serving import read_warmup, rest_body

HERE = Path(__file__).parent


def test_contract_in_a_process_without_kerasio_or_keras(pipeline, tmp_path, capsys):
    bundle = tmp_path / "b"
    info = kerasio.BundleInfo(feature_names=pipeline.dataset.feature_names, class_names=pipeline.dataset.class_names)
    kerasio.export(pipeline.model, bundle, reference_inputs=pipeline.split.x_test, formats="savedmodel", info=info)
    kerasio.export(pipeline.model, bundle, reference_inputs=pipeline.split.x_test, formats="savedmodel", info=info)
    rows = pipeline.split.x_test[:7]
    import pandas as pd

    pd.DataFrame(rows, columns=pipeline.dataset.feature_names).to_csv(tmp_path / "rows.csv", index=False)
    assert main(["serving-request", str(bundle), "--input", str(tmp_path / "rows.csv")]) == 0
    body_path = tmp_path / "body.json"
    body_path.write_text(capsys.readouterr().out)
    _, probs = kerasio.predict(kerasio.load(bundle, format="savedmodel"), rows, probabilities=True)
    np.save(tmp_path / "kerasio_probs.npy", probs)
    out = subprocess.run([sys.executable, str(HERE / "serving_contract.py"), str(bundle), str(body_path),
                          str(tmp_path / "kerasio_probs.npy")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    findings = json.loads(out.stdout.strip().splitlines()[-1])
    assert [v["version"] for v in findings["versions"]] == ["1", "2"]
    assert all(v["warmup_records"] == 100 for v in findings["versions"])
    assert findings["rest_max_diff"] <= 1e-6
    assert findings["imported_kerasio"] is False and findings["imported_keras"] is False


def test_rest_bodies():
    rows = np.array([[1.0, 2.5], [3.0, 4.0]], np.float32)
    assert rest_body({"features": rows}) == {"signature_name": "serving_default",
                               "instances": [{"features": [1.0, 2.5]}, {"features": [3.0, 4.0]}]}
    assert rest_body({"features": rows}, columnar=True, signature_name="predict_labels") == {
        "signature_name": "predict_labels", "inputs": {"features": [[1.0, 2.5], [3.0, 4.0]]}}


def test_serving_request_cli_columnar(keras_bundle, tmp_path, capsys):
    x = kerasio.read_manifest(keras_bundle).reference_arrays(keras_bundle)[0]["features"][:2]
    import pandas as pd

    names = kerasio.read_manifest(keras_bundle).feature_names
    pd.DataFrame(x, columns=names).to_csv(tmp_path / "rows.csv", index=False)
    assert main(["serving-request", str(keras_bundle), "--input", str(tmp_path / "rows.csv"), "--columnar"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert np.allclose(body["inputs"]["features"], x)


def test_warmup_records_parse_in_process(keras_bundle):
    logs = read_warmup(keras_bundle / "serving" / "1")
    assert len(logs) == 100
    request = logs[0].predict_log.request
    import tensorflow as tf

    x = kerasio.read_manifest(keras_bundle).reference_arrays(keras_bundle)[0]["features"]
    assert np.array_equal(tf.make_ndarray(request.inputs["features"]), x[:1])


def test_predict_labels_signature_returns_class_names(keras_bundle):
    loaded = kerasio.load(keras_bundle, format="savedmodel")
    x = kerasio.read_manifest(keras_bundle).reference_arrays(keras_bundle)[0]["features"][:5]
    import tensorflow as tf

    out = loaded.model.signatures["predict_labels"](features=tf.constant(x))
    labels = [v.decode() for v in out["labels"].numpy()]
    assert labels == list(kerasio.predict(kerasio.load(keras_bundle), x))


def test_float32_values_print_in_their_shortest_form_and_read_back_exactly():
    values = np.array([[6.42, 0.1, 1e-8, 3.4028235e38]], np.float32)
    body = rest_body({"features": values})
    text = json.dumps(body)
    assert '[6.42, 0.1, 1e-08, 3.4028235e+38]' in text and "6.420000076293945" not in text
    parsed = np.array(json.loads(text)["instances"][0]["features"], np.float32)
    assert parsed.tobytes() == values[0].tobytes()  # TF Serving reads back the very same float32s
