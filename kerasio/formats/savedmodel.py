"""``savedmodel``: a TF SavedModel laid out for TF Serving at ``serving/<version>``.

* ``serving_default``: ``features`` float32 ``[None, n]`` -> ``probabilities``
  float32 ``[None, classes]`` and ``class_id`` int64 ``[None]`` (not ``output_0``).
* ``predict_labels``: the same input -> ``labels`` (class names, strings) and
  ``probabilities``.
* ``assets.extra/tf_serving_warmup_requests``: TFRecord ``PredictionLog``s.

Reload with ``tf.saved_model.load``; it is an inference artifact, not a Keras
model. Versions are never overwritten: each export takes the next integer.
"""
from __future__ import annotations

from pathlib import Path

from ..audit import audit_saved_model, read_saved_model_proto
from ..errors import ArtifactError
from ..runtime import require
from ..serving import write_warmup
from .base import ExportContext, Format, Runner, register

SERVING_DIR = "serving"


def next_version(bundle: Path) -> int:
    """The next free integer version under ``<bundle>/serving``."""
    base = Path(bundle) / SERVING_DIR
    used = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return max(used, default=0) + 1


class SavedModelFormat(Format):
    name = "savedmodel"
    filename = SERVING_DIR
    runtime = "tensorflow"
    default = True
    description = "TF SavedModel for TF Serving (serving/<version>, named outputs, warmup)"

    def relpath(self, bundle: Path) -> str:
        return f"{SERVING_DIR}/{next_version(bundle)}"

    def save(self, model, dest: Path, ctx: ExportContext) -> dict:
        tf = require("tensorflow", "exporting a SavedModel")
        import keras

        n_features = len(ctx.feature_names)
        class_names = tf.constant(list(ctx.class_names))
        spec = tf.TensorSpec([None, n_features], tf.float32, name="features")

        def serving_default(features):
            probabilities = model(features, training=False)
            return {"probabilities": probabilities, "class_id": tf.argmax(probabilities, axis=-1, output_type=tf.int64)}

        def predict_labels(features):
            probabilities = model(features, training=False)
            labels = tf.gather(class_names, tf.argmax(probabilities, axis=-1))
            return {"labels": labels, "probabilities": probabilities}

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serving_default, input_signature=[spec])
        archive.add_endpoint("predict_labels", predict_labels, input_signature=[spec])
        archive.write_out(str(dest), verbose=False)
        records = write_warmup(dest, ctx.reference_inputs, limit=ctx.warmup_records)
        return {"warmup_records": records}

    def load(self, path: Path, *, trust: bool = False) -> Runner:
        tf = require("tensorflow", "loading a SavedModel")
        if not (path / "saved_model.pb").is_file():
            raise ArtifactError(f"{path}: no saved_model.pb; not a SavedModel directory.")
        audit_saved_model(path)  # before TensorFlow builds anything from it
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises many types for corrupt protos
            raise ArtifactError(f"{path}: TensorFlow could not load the SavedModel ({str(exc)[:300]}).") from None
        if "serving_default" not in loaded.signatures:
            raise ArtifactError(f"{path}: SavedModel has no serving_default signature.")
        signature = loaded.signatures["serving_default"]

        def predict_proba(x):
            return signature(features=tf.constant(x, tf.float32))["probabilities"].numpy()

        return Runner(predict_proba=predict_proba, format=self.name, path=path, runtime="tensorflow",
                      n_features=int(signature.structured_input_signature[1]["features"].shape[-1]),
                      n_classes=int(signature.structured_outputs["probabilities"].shape[-1]),
                      model=loaded, info={"signature": "serving_default"})

    def matches(self, path: Path) -> bool:
        return path.is_dir() and (path / "saved_model.pb").is_file()

    def describe(self, path: Path) -> dict:
        """Signature names, inputs and outputs, read from ``saved_model.pb`` without loading it."""
        require("tensorflow", "reading a SavedModel's signatures")
        from tensorflow.python.framework import dtypes

        proto = read_saved_model_proto(path)
        signatures = {}
        for name, sig in proto.meta_graphs[0].signature_def.items():
            if name.startswith("__"):
                continue
            io = {}
            for kind in ("inputs", "outputs"):
                io[kind] = {
                    key: {"dtype": dtypes.as_dtype(t.dtype).name,
                          "shape": [d.size if d.size >= 0 else None for d in t.tensor_shape.dim]}
                    for key, t in getattr(sig, kind).items()
                }
            signatures[name] = io
        return {"signatures": signatures}


FORMAT = register(SavedModelFormat())
