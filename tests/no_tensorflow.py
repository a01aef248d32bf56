"""Run kerasio as on a machine with Keras + JAX but no TensorFlow.

Usage: python tests/no_tensorflow.py BUNDLE. A meta-path finder makes every
``tensorflow`` import fail, as if the package were not installed. Prints one
JSON line of findings.
"""
import importlib.abc
import json
import os
import sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: this machine has no TensorFlow)")
        return None


sys.meta_path.insert(0, _NoTensorFlow())
os.environ["KERAS_BACKEND"] = "jax"

import kerasio  # noqa: E402

bundle = sys.argv[1]
keras_report = kerasio.verify(bundle, formats=["keras", "h5", "weights"], in_process=True, record=False)
savedmodel_report = kerasio.verify(bundle, formats="savedmodel", in_process=True, record=False)
loaded = kerasio.load(bundle)
x = kerasio.read_manifest(bundle).reference_arrays(bundle)[0]["features"]
print(json.dumps({
    "keras_ok": keras_report.ok,
    "backends": sorted({c.backend for c in keras_report.checks}),
    "max_abs_diff": max(c.max_abs_diff for c in keras_report.checks),
    "savedmodel_error": savedmodel_report.checks[0].error,
    "labels": list(map(str, kerasio.predict(loaded, x[:3]))),
    "tensorflow_imported": any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules),
}))
