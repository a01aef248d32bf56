"""``savedmodel``: a TF SavedModel laid out for TF Serving at ``serving/<version>``.

* ``serving_default``: the model's own input names and dtypes (a string input
  stays a string, an int stays an int) -> its own output names (not
  ``output_0``); a classification also returns ``class_id`` (int64).
* ``predict_labels`` (classifications only): the same inputs -> ``labels``
  (class names, strings) and the probabilities.
* ``assets.extra/tf_serving_warmup_requests``: TFRecord ``PredictionLog``s.

Reload with ``tf.saved_model.load``; it is an inference artifact, not a Keras
model. Versions are never overwritten: each export takes the next integer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..audit import audit_saved_model, read_saved_model_proto
from ..errors import ArtifactError
from ..runtime import require, tf_input_names
from ..serving import write_warmup
from ..signature import Signature, TensorSpec, dtype_name
from ._tf_common import endpoint, forward_function
from .base import ExportContext, Format, Runner, register

SERVING_DIR = "serving"


def next_version(bundle: Path) -> int:
    """The next free integer version under ``<bundle>/serving``, counting those kept in generations.

    (A version's ``serving/<n>`` link tree is made after the manifest swap; a
    kill in between leaves it only in its generation until the next export.)
    """
    used = []
    for base in [Path(bundle) / SERVING_DIR, *Path(bundle).glob(f"generations/*/{SERVING_DIR}")]:
        if base.is_dir():
            used += [int(p.name) for p in base.iterdir() if p.name.isdigit()]
    return max(used, default=0) + 1


class SavedModelFormat(Format):
    name = "savedmodel"
    filename = SERVING_DIR
    runtime = "tensorflow"
    default = True
    description = "TF SavedModel for TF Serving (serving/<version>, the model's own I/O names and dtypes, warmup)"

    def relpath(self, bundle: Path) -> str:
        return f"{SERVING_DIR}/{next_version(bundle)}"

    def worker_backend(self, requested: str) -> str:
        return "tensorflow"

    def available_devices(self, backend: str) -> list[str]:
        from ..runtime import available_devices

        return available_devices("tensorflow")

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        tf = require("tensorflow", "exporting a SavedModel")
        import keras

        if keras.backend.backend() != "tensorflow":  # JAX, PyTorch: TensorFlow builds it in a worker of its own
            return _save_through_tensorflow(model, dest, ctx)

        task = ctx.task
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", endpoint(forward_function(model, ctx.signature, task), ctx.signature))
        if task.is_classification:
            class_names = tf.constant(list(task.class_names))
            forward = forward_function(model, ctx.signature, task)

            def predict_labels(*tensors: Any) -> dict[str, Any]:
                outputs = forward(*tensors)
                return {"labels": tf.gather(class_names, outputs["class_id"]),
                        str(task.output): outputs[str(task.output)]}

            archive.add_endpoint("predict_labels", endpoint(predict_labels, ctx.signature))
        archive.write_out(str(dest), verbose=False)
        rows = {name: ctx.reference_inputs[spec.name]
                for name, spec in zip(tf_input_names(ctx.signature), ctx.signature.inputs)}
        records = write_warmup(dest, rows, limit=ctx.warmup_records)
        return {"warmup_records": records}

    def load(self, path: Path, *, signature: Signature | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:
        tf = require("tensorflow", "loading a SavedModel")
        if not (path / "saved_model.pb").is_file():
            raise ArtifactError(f"{path}: no saved_model.pb; not a SavedModel directory. Pass the version "
                                f"directory (serving/<n>). Received: {path}")
        audit_saved_model(path)  # before TensorFlow builds anything from it
        where = tf.device("/GPU:0" if device == "gpu" else "/CPU:0")
        try:
            with where:
                loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises many types for corrupt protos
            raise ArtifactError(f"{path}: TensorFlow could not load the SavedModel; re-export it. "
                                f"Received: {type(exc).__name__}: {str(exc)[:300]}") from None
        if "serving_default" not in loaded.signatures:
            raise ArtifactError(f"{path}: SavedModel has no serving_default signature; re-export it with kerasio. "
                                f"Received: signatures={list(loaded.signatures)}")
        endpoint = loaded.signatures["serving_default"]
        accepted = endpoint.structured_input_signature[1]
        if signature is None:
            signature = _signature_of(endpoint)
        names = tf_input_names(signature)
        names = names if all(n in accepted for n in names) else list(accepted)
        if len(names) != len(signature.inputs):
            raise ArtifactError(f"{path}: serving_default takes {sorted(accepted)}, but the manifest's signature "
                                f"has inputs {signature.input_names}. Re-export the bundle. Received: {sorted(accepted)}")
        order = list(zip(names, signature.input_names))

        def run(inputs: Any) -> dict[str, Any]:
            return endpoint(**{key: tf.constant(inputs[name]) for key, name in order})

        return Runner(run, format=self.name, path=path, runtime="tensorflow", backend="tensorflow",
                      signature=signature, device=device, model=loaded, info={"signature": "serving_default"},
                      context=lambda: tf.device("/GPU:0" if device == "gpu" else "/CPU:0"))

    def matches(self, path: Path) -> bool:
        return path.is_dir() and (path / "saved_model.pb").is_file()

    def describe(self, path: Path) -> dict[str, Any]:
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


def _save_through_tensorflow(model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
    """A SavedModel of a model trained on another backend: its ``.keras`` file, loaded by TensorFlow, saved there.

    A ``.keras`` file is backend-agnostic, so the TensorFlow worker's model has the same weights; the SavedModel is
    then made by the same code as for a TensorFlow model, and verified against this model's reference outputs.
    """
    import tempfile

    from ..manifest import save_arrays
    from ..worker import Worker

    with tempfile.TemporaryDirectory(prefix="kerasio-savedmodel-") as tmp:
        keras_file, references = Path(tmp) / "model.keras", Path(tmp) / "references.npz"
        model.save(keras_file)
        save_arrays(references, ctx.reference_inputs)
        with Worker("tensorflow") as worker:
            answer = worker.collect(worker.submit({
                "op": "call", "target": "kerasio.formats.savedmodel:save_from_keras_file",
                "args": [str(keras_file), str(dest), ctx.signature.to_dict(), ctx.task.to_dict(), str(references),
                         ctx.warmup_records]}))
    if not answer.get("ok"):
        raise ArtifactError(f"{dest}: TensorFlow could not build the SavedModel from the {model.name!r} model's "
                            f".keras file; drop 'savedmodel' from the formats. Received: {answer.get('error')}")
    return dict(answer["result"])


def save_from_keras_file(keras_file: str, dest: str, signature: dict[str, Any], task: dict[str, Any],
                         references: str, warmup_records: int) -> dict[str, Any]:
    """In a TensorFlow worker: load our own just-written ``.keras`` file and save it as a SavedModel at ``dest``."""
    import keras

    from ..manifest import load_arrays
    from ..task import Task

    sig = Signature.from_dict(signature)
    model = keras.saving.load_model(keras_file, compile=False)
    ctx = ExportContext(signature=sig, task=Task.from_dict(task), warmup_records=warmup_records,
                        reference_inputs=load_arrays(Path(references), sig.input_names, list(sig.inputs)))
    return FORMAT.save(model, Path(dest), ctx)


def _signature_of(endpoint: Any) -> Signature:
    """A bare SavedModel's signature, read from its ``serving_default``."""
    def spec(name: str, t: Any) -> TensorSpec:
        shape = t.shape.as_list() if t.shape.rank is not None else [None]
        return TensorSpec(name, dtype_name(t.dtype), tuple(shape))

    inputs = [spec(k, t) for k, t in sorted(endpoint.structured_input_signature[1].items())]
    outputs = [spec(k, t) for k, t in sorted(endpoint.structured_outputs.items())]
    return Signature(inputs=inputs, outputs=outputs, input_structure="dict", output_structure="dict")


FORMAT = register(SavedModelFormat())
