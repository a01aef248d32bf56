"""``onnx``: Keras's ONNX export, renamed to ``features`` -> ``probabilities``, run by onnxruntime."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError, UnsafeArtifactError
from ..runtime import require
from .base import ExportContext, Format, Runner, register

INPUT, OUTPUT = "features", "probabilities"
OPSET = 17


class OnnxFormat(Format):
    name = "onnx"
    filename = "model.onnx"
    runtime = "onnxruntime"
    suffixes = (".onnx",)
    description = "ONNX graph (tf2onnx), verified in onnxruntime"

    def save(self, model, dest: Path, ctx: ExportContext) -> dict:
        """Freeze the forward pass, convert it with tf2onnx and name its I/O.

        ``model.export(format="onnx")`` hands tf2onnx a function whose captured
        constants (an adapted ``Normalization``'s mean and variance) become
        unbound graph *inputs*: onnxruntime then refuses to run it without them.
        Freezing every capture into a constant first gives a self-contained
        graph with exactly one input.
        """
        onnx = require("onnx", "exporting ONNX")
        tf2onnx = require("tf2onnx", "exporting ONNX")
        tf = require("tensorflow", "exporting ONNX")
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        spec = tf.TensorSpec([None, len(ctx.feature_names)], tf.float32, name=INPUT)
        concrete = tf.function(lambda features: model(features, training=False)).get_concrete_function(spec)
        frozen = convert_variables_to_constants_v2(concrete)
        graph_model, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
            output_names=[t.name for t in frozen.outputs], opset=OPSET,
        )
        _rename_io(graph_model.graph, INPUT, OUTPUT)
        onnx.checker.check_model(graph_model)
        onnx.save(graph_model, str(dest))
        return {"opset": OPSET}

    def load(self, path: Path, *, trust: bool = False, providers=None) -> Runner:
        ort = require("onnxruntime", "running ONNX")
        _refuse_external_data(path)
        try:
            session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{path}: onnxruntime could not load it ({str(exc)[:300]}). Re-export it.") from None
        names = [i.name for i in session.get_inputs()]
        if names != [INPUT]:
            raise ArtifactError(f"{path}: ONNX inputs are {names}, expected ['{INPUT}'].")

        def predict_proba(x):
            return session.run([OUTPUT], {INPUT: np.asarray(x, np.float32)})[0]

        return Runner(predict_proba=predict_proba, format=self.name, path=path, runtime="onnxruntime",
                      n_features=int(session.get_inputs()[0].shape[-1]),
                      n_classes=int(session.get_outputs()[0].shape[-1]),
                      model=session, info={"providers": session.get_providers()})

    def describe(self, path: Path) -> dict:
        onnx = require("onnx", "reading ONNX")
        graph = onnx.load(str(path), load_external_data=False).graph
        return {"inputs": [i.name for i in graph.input], "outputs": [o.name for o in graph.output]}


def _refuse_external_data(path: Path) -> None:
    """kerasio never writes external tensor data; a file that points outside itself is refused."""
    onnx = require("onnx", "reading ONNX")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError and others for garbage
        raise ArtifactError(f"{path}: not a readable ONNX model ({str(exc)[:200]}). Re-export it.") from None
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise UnsafeArtifactError(
                f"{path}: initializer {tensor.name!r} reads external data from {where!r}; refusing to load."
            )


def _rename_io(graph, input_name: str, output_name: str) -> None:
    """Give the graph's single input and output stable names (the converter says ``Identity:0``)."""
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ArtifactError(f"ONNX graph has {len(graph.input)} inputs / {len(graph.output)} outputs; expected 1 / 1.")
    renames = {graph.input[0].name: input_name, graph.output[0].name: output_name}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    graph.input[0].name = input_name
    graph.output[0].name = output_name


FORMAT = register(OnnxFormat())
