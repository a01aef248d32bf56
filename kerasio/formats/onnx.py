"""``onnx``: Keras's ONNX export, renamed to ``features`` -> ``probabilities``, run by onnxruntime."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..runtime import require
from .base import ExportContext, Format, Runner, register

INPUT, OUTPUT = "features", "probabilities"


class OnnxFormat(Format):
    name = "onnx"
    filename = "model.onnx"
    runtime = "onnxruntime"
    suffixes = (".onnx",)
    description = "ONNX graph (tf2onnx), verified in onnxruntime"

    def save(self, model, dest: Path, ctx: ExportContext) -> dict:
        onnx = require("onnx", "exporting ONNX")
        require("tf2onnx", "exporting ONNX")
        # A reloaded model that was never called has no traced shapes; ONNX export needs them.
        model(ctx.reference_inputs[:1], training=False)
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            model.export(str(raw), format="onnx", verbose=False)
            graph_model = onnx.load(str(raw))
        _rename_io(graph_model.graph, INPUT, OUTPUT)
        onnx.checker.check_model(graph_model)
        onnx.save(graph_model, str(dest))
        return self.describe(dest)

    def load(self, path: Path, *, trust: bool = False, providers=None) -> Runner:
        ort = require("onnxruntime", "running ONNX")
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
                      model=session, info={"providers": session.get_providers()})

    def describe(self, path: Path) -> dict:
        onnx = require("onnx", "reading ONNX")
        graph = onnx.load(str(path), load_external_data=False).graph
        return {"inputs": [i.name for i in graph.input], "outputs": [o.name for o in graph.output]}


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
