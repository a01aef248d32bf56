"""TF Serving's contract, checked without TF Serving, kerasio or Keras.

Run as ``python tests/serving_contract.py BUNDLE REST_BODY.json KERASIO_PROBS.npy``
in a fresh process. It uses only TensorFlow, TF Serving's protos and
``saved_model_cli``, the pieces TF Serving itself is built on, and prints one
JSON line of findings. It exits non-zero on the first broken promise.
"""
import importlib.abc
import importlib.machinery
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


class _NoKeras(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import tensorflow`` imports Keras 3 wholesale; here every ``keras`` module is an empty stub.

    TF Serving runs SavedModels in C++ with no Python Keras at all, so the
    contract must hold without one: if loading or serving touched Keras code,
    the empty stubs would make it fail.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "keras" or name.startswith("keras."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        if name == "kerasio" or name.startswith("kerasio."):
            raise ImportError("the serving contract must not use kerasio")
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__path__ = []


sys.meta_path.insert(0, _NoKeras())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402

bundle, body_path, kerasio_probs_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cli = str(Path(sys.executable).with_name("saved_model_cli"))
with np.load(bundle / "reference_inputs.npz", allow_pickle=False) as z:
    x_ref = z["features"]
with np.load(bundle / "reference_outputs.npz", allow_pickle=False) as z:
    y_ref = z["probabilities"]
findings = {"versions": []}

versions = sorted((p for p in (bundle / "serving").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
assert versions, "no integer version directories under serving/"
assert not [p for p in (bundle / "serving").iterdir() if not p.name.isdigit()], "stray entries in serving/"
for version in versions:
    # 1. TF loads the version; both signatures are there.
    loaded = tf.saved_model.load(str(version))
    assert set(loaded.signatures) >= {"serving_default", "predict_labels"}, list(loaded.signatures)
    serve = loaded.signatures["serving_default"]

    # 2. saved_model_cli show --all: names, dtypes and shapes as TF Serving will see them.
    shown = subprocess.run([cli, "show", "--dir", str(version), "--all"], capture_output=True, text=True, check=True).stdout
    block = shown.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    assert re.search(r"inputs\['features'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 10\)", block), block
    assert re.search(r"outputs\['probabilities'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 3\)", block), block
    assert re.search(r"outputs\['class_id'\] tensor_info:\s+dtype: DT_INT64\s+shape: \(-1\)", block), block
    assert "output_0" not in shown
    labels_block = shown.split("signature_def['predict_labels']:")[1].split("signature_def[")[0]
    assert re.search(r"outputs\['labels'\] tensor_info:\s+dtype: DT_STRING", labels_block), labels_block

    # 3. saved_model_cli run on the reference rows.
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x_ref)
        subprocess.run([cli, "run", "--dir", str(version), "--tag_set", "serve", "--signature_def", "serving_default",
                        "--inputs", f"features={tmp}/x.npy", "--outdir", tmp], capture_output=True, check=True)
        cli_probs = np.load(Path(tmp) / "probabilities.npy")
        cli_class = np.load(Path(tmp) / "class_id.npy")
    cli_diff = float(np.abs(cli_probs - y_ref).max())
    assert cli_diff <= 1e-6 and np.array_equal(cli_class, y_ref.argmax(1)), cli_diff

    # 4. The warmup file parses into PredictionLog records, and each replays through the signature.
    records = list(tf.data.TFRecordDataset(str(version / "assets.extra" / "tf_serving_warmup_requests")))
    assert 0 < len(records) <= 1000
    replay_diff = 0.0
    for i, record in enumerate(records):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        features = tf.make_ndarray(request.inputs["features"])
        out = serve(features=tf.constant(features))
        replay_diff = max(replay_diff, float(np.abs(out["probabilities"].numpy() - y_ref[i:i + 1]).max()))
    assert replay_diff <= 1e-6, replay_diff
    findings["versions"].append({"version": version.name, "warmup_records": len(records),
                                 "cli_max_diff": cli_diff, "replay_max_diff": replay_diff})

# 5. Answer a REST row-format body as TF Serving would, and compare with kerasio.predict.
body = json.loads(body_path.read_text())
assert set(body) == {"signature_name", "instances"} and body["signature_name"] == "serving_default"
features = np.array([inst["features"] for inst in body["instances"]], np.float32)
latest = tf.saved_model.load(str(versions[-1])).signatures["serving_default"]
result = latest(features=tf.constant(features))
answer = {"predictions": [{"probabilities": p.tolist(), "class_id": int(c)}
                          for p, c in zip(result["probabilities"].numpy(), result["class_id"].numpy())]}
served = np.array([p["probabilities"] for p in json.loads(json.dumps(answer))["predictions"]], np.float32)
kerasio_probs = np.load(kerasio_probs_path)
rest_diff = float(np.abs(served - kerasio_probs).max())
assert rest_diff <= 1e-6, rest_diff
findings["rest_max_diff"] = rest_diff
findings["imported_kerasio"] = "kerasio" in sys.modules
findings["imported_keras"] = any(
    getattr(m, "__file__", None) for k, m in list(sys.modules.items()) if k == "keras" or k.startswith("keras."))
print(json.dumps(findings))
