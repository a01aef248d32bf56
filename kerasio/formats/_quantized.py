"""Shared by the quantized variants (litert-fp16, litert-int8, onnx-int8, onnx-int8-static, keras-int8/int4/float8).

Each variant is a format of its own module, a subclass of the full-precision
format whose runtime runs it; what they share is recorded here: the scheme, the
hash of the representative data calibration used (the reference inputs), and the
default gates its verification is held to (:mod:`kerasio.spec.quantization`).
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from kerasio.backends.environment import require
from kerasio.formats.base import ExportContext
from kerasio.formats.keras_native import KerasFormat
from kerasio.formats.onnx import OnnxFormat
from kerasio.spec.quantization import gates_for

__all__ = ["quantization_info", "representative_rows", "CALIBRATION_ROWS", "OnnxQuantizedFormat",
           "KerasQuantizedFormat"]

CALIBRATION_ROWS = 256  # at most this many reference rows calibrate a static quantization


def quantization_info(ctx: ExportContext, scheme: str, *, calibrated: bool) -> dict[str, Any]:
    """What the manifest records of a quantized artifact: its scheme, calibration data and default gates."""
    info: dict[str, Any] = {"scheme": scheme,
                            "gates": [g.metric + " " + g.text() for g in gates_for(ctx.task.kind)]}
    if calibrated:
        rows = len(next(iter(ctx.reference_inputs.values())))
        digest = hashlib.sha256()
        for name in sorted(ctx.reference_inputs):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(ctx.reference_inputs[name][:CALIBRATION_ROWS]).tobytes())
        info.update(representative_sha256=digest.hexdigest(), representative_rows=min(rows, CALIBRATION_ROWS))
    return {"quantization": info}


def representative_rows(inputs: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """The reference inputs one row at a time (a batch of one each), at most :data:`CALIBRATION_ROWS`."""
    rows = min(len(next(iter(inputs.values()))), CALIBRATION_ROWS)
    for i in range(rows):
        yield {name: np.asarray(value[i:i + 1]) for name, value in inputs.items()}


class OnnxQuantizedFormat(OnnxFormat):
    """An ONNX graph quantized by onnxruntime from the export's float ONNX (or one written for it); run, audited
    and explained as any ONNX graph. Subclasses say how (:meth:`quantize`)."""

    default = False

    def relpath(self, bundle: Path, ctx: ExportContext | None = None) -> str:
        return self.filename  # int8 weights are a quarter of the float ones: one file, whatever the model

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        require("onnxruntime.quantization", "quantizing ONNX")
        with tempfile.TemporaryDirectory(prefix=".onnx-quant-", dir=dest.parent) as tmp:
            source = ctx.written.get("onnx")
            source = source / "model.onnx" if source is not None and source.is_dir() else source
            quantized_from = "onnx"
            if source is None:
                source, quantized_from = Path(tmp) / "float.onnx", "its own float ONNX"
                OnnxFormat.save(self, model, source, ctx)
            logging.disable(logging.WARNING)  # "consider pre-processing": onnxruntime's advice, not the user's concern
            try:
                made = self.quantize(Path(source), dest, ctx)
            finally:
                logging.disable(logging.NOTSET)
        return {**made, "quantized_from": quantized_from}

    def quantize(self, source: Path, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        raise NotImplementedError


class KerasQuantizedFormat(KerasFormat):
    """A ``.keras`` file of the model after Keras's own ``model.quantize(mode)``, applied to a copy."""

    default = False
    mode = ""

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        import keras

        with tempfile.TemporaryDirectory(prefix=".keras-quant-", dir=dest.parent) as tmp:
            model.save(Path(tmp) / "float.keras")  # the caller's model stays as it is
            copy = keras.saving.load_model(Path(tmp) / "float.keras", compile=False)
        copy.quantize(self.mode)
        copy.save(dest)
        return quantization_info(ctx, self.quantized, calibrated=False)
