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
from typing import Any, Mapping, Sequence

import numpy as np

from kerasio.backends.base import available_devices
from kerasio.backends.environment import require
from kerasio.backends.tensorflow import tf_input_names
from kerasio.bundle.audit import audit_saved_model, read_saved_model_proto
from kerasio.errors import ArtifactError
from kerasio.formats._tf_common import endpoint, forward_function, write_saved_model
from kerasio.formats.base import ExportContext, Format, Runner, register
from kerasio.formats.tf_serving import write_warmup
from kerasio.spec.divergence import LayerOutput, read_layers
from kerasio.spec.iospec import IOSpec, TensorSpec, dtype_name

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
    save_backend = "tensorflow"  # under JAX or PyTorch, export writes it in a TensorFlow worker
    options = {"warmup_records": "how many reference rows go into TF Serving's warmup file (default 100, at most 1000)"}
    description = "TF SavedModel for TF Serving (serving/<version>, the model's own I/O names and dtypes, warmup)"

    repro_code = """
import tensorflow as tf


def run(path, inputs):
    endpoint = tf.saved_model.load(path).signatures["serving_default"]
    with tf.device("/GPU:0" if DEVICE == "gpu" else "/CPU:0"):
        out = endpoint(**{key: tf.constant(inputs[name]) for key, name in zip(INPUT_KEYS, INPUT_NAMES)})
    return {name: out[name].numpy() for name in OUTPUT_NAMES}
"""

    def relpath(self, bundle: Path, ctx: ExportContext | None = None) -> str:
        return f"{SERVING_DIR}/{next_version(bundle)}"

    def worker_backend(self, requested: str) -> str:
        return "tensorflow"

    def available_devices(self, backend: str) -> list[str]:
        return available_devices("tensorflow")

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        tf = require("tensorflow", "exporting a SavedModel")

        task = ctx.task
        serving = endpoint(forward_function(model, ctx.iospec, task), ctx.iospec)
        endpoints = {"serving_default": serving}
        if task.is_classification:
            class_names = tf.constant(list(task.class_names))

            def predict_labels(*tensors: Any) -> dict[str, Any]:
                outputs = serving(*tensors)  # the serving function's graph, called, not the model traced again
                return {"labels": tf.gather(class_names, outputs["class_id"]),
                        str(task.output): outputs[str(task.output)]}

            endpoints["predict_labels"] = endpoint(predict_labels, ctx.iospec)
        write_saved_model(model, dest, endpoints)
        rows = {name: ctx.reference_inputs[spec.name]
                for name, spec in zip(tf_input_names(ctx.iospec), ctx.iospec.inputs)}
        records = write_warmup(dest, rows, limit=int(ctx.options.get("warmup_records", 100)))
        return {"warmup_records": records}

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
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
        if iospec is None:
            iospec = _signature_of(endpoint)
        names = tf_input_names(iospec)
        names = names if all(n in accepted for n in names) else list(accepted)
        if len(names) != len(iospec.inputs):
            raise ArtifactError(f"{path}: serving_default takes {sorted(accepted)}, but the manifest's signature "
                                f"has inputs {iospec.input_names}. Re-export the bundle. Received: {sorted(accepted)}")
        order = list(zip(names, iospec.input_names))

        def run(inputs: Any) -> dict[str, Any]:
            return endpoint(**{key: tf.constant(inputs[name]) for key, name in order})

        return Runner(run, format=self.name, path=path, runtime="tensorflow", backend="tensorflow",
                      iospec=iospec, device=device, model=loaded, info={"signature": "serving_default"},
                      context=lambda: tf.device("/GPU:0" if device == "gpu" else "/CPU:0"))

    def intermediates(self, runner: Runner, inputs: Mapping[str, np.ndarray],
                      layers: Sequence[LayerOutput]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Each layer's tensor, read from ``serving_default`` frozen with the artifact's own variables.

        The function is frozen as the ONNX writer freezes (calls inlined, so nodes keep their scoped names under
        ``StatefulPartitionedCall/``), imported into a graph of its own and pruned to the layers' tensors.
        """
        tf = require("tensorflow", "reading a SavedModel's tensors")
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        endpoint = runner.model.signatures["serving_default"]
        frozen = convert_variables_to_constants_v2(endpoint, lower_control_flow=False, aggressive_inlining=True)
        graph_def = frozen.graph.as_graph_def()
        wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
        by_name = dict(zip(tf_input_names(runner.iospec), runner.iospec.input_names))
        feeds = [wrapped.graph.get_tensor_by_name(t.name) for t in frozen.inputs]

        def fetch(names: list[str]) -> dict[str, np.ndarray]:
            pruned = wrapped.prune(feeds, [wrapped.graph.get_tensor_by_name(f"{n}:0") for n in names])
            with tf.device("/GPU:0" if runner.device == "gpu" else "/CPU:0"):
                values = pruned(*[tf.constant(inputs[by_name[t.op.name]]) for t in frozen.inputs])
            return {n: v.numpy() for n, v in zip(names, values)}

        return read_layers(layers, [node.name for node in graph_def.node if node.op != "Const"], fetch)

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


def _signature_of(endpoint: Any) -> IOSpec:
    """A bare SavedModel's signature, read from its ``serving_default``."""
    def spec(name: str, t: Any) -> TensorSpec:
        shape = t.shape.as_list() if t.shape.rank is not None else [None]
        return TensorSpec(name, dtype_name(t.dtype), tuple(shape))

    inputs = [spec(k, t) for k, t in sorted(endpoint.structured_input_signature[1].items())]
    outputs = [spec(k, t) for k, t in sorted(endpoint.structured_outputs.items())]
    return IOSpec(inputs=inputs, outputs=outputs, input_structure="dict", output_structure="dict")


FORMAT = register(SavedModelFormat())
