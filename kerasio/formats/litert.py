"""``litert``: a ``.tflite`` flatbuffer, verified in the LiteRT (TFLite) interpreter."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError, BackendUnavailableError
from ..runtime import require
from .base import ExportContext, Format, Runner, register


def _interpreter_class():
    try:
        return require("ai_edge_litert.interpreter", "running LiteRT").Interpreter
    except BackendUnavailableError:
        return require("tensorflow", "running LiteRT").lite.Interpreter


class LiteRTFormat(Format):
    name = "litert"
    filename = "model.tflite"
    runtime = "litert"
    suffixes = (".tflite",)
    description = "LiteRT flatbuffer (.tflite), verified in the LiteRT interpreter"

    def save(self, model, dest: Path, ctx: ExportContext) -> dict:
        require("tensorflow", "exporting LiteRT")
        model(ctx.reference_inputs[:1], training=False)
        model.export(str(dest), format="litert", verbose=False)
        return {}

    def load(self, path: Path, *, trust: bool = False) -> Runner:
        Interpreter = _interpreter_class()
        try:
            interpreter = Interpreter(model_path=str(path))
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{path}: the LiteRT interpreter could not load it ({exc}). Re-export it.") from None
        inp = interpreter.get_input_details()[0]
        out = interpreter.get_output_details()[0]
        state = {"batch": None}

        def predict_proba(x):
            x = np.asarray(x, np.float32)
            if state["batch"] != len(x):  # resize the batch dimension, then re-allocate
                interpreter.resize_tensor_input(inp["index"], [len(x), x.shape[1]], strict=False)
                interpreter.allocate_tensors()
                state["batch"] = len(x)
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"]).copy()

        return Runner(predict_proba=predict_proba, format=self.name, path=path, runtime="litert",
                      n_features=int(inp["shape"][-1]), n_classes=int(out["shape"][-1]),
                      model=interpreter, info={"interpreter": f"{Interpreter.__module__}.Interpreter"})

    def describe(self, path: Path) -> dict:
        interpreter = _interpreter_class()(model_path=str(path))
        return {"inputs": [d["name"] for d in interpreter.get_input_details()],
                "outputs": [d["name"] for d in interpreter.get_output_details()]}


FORMAT = register(LiteRTFormat())
