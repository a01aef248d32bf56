"""``onnx-int8``: the ONNX graph with int8 weights and activations quantized at run time (onnxruntime's dynamic
quantization), judged by the gates."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kerasio.formats._quantized import OnnxQuantizedFormat, quantization_info
from kerasio.formats.base import ExportContext, register

SCHEME = "int8 weights, activations quantized per call (onnxruntime dynamic quantization)"


class OnnxInt8Format(OnnxQuantizedFormat):
    name = "onnx-int8"
    filename = "model_int8.onnx"
    quantized = SCHEME
    description = "ONNX with int8 weights (onnxruntime dynamic quantization), verified against the gates"

    def quantize(self, source: Path, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8)
        return quantization_info(ctx, SCHEME, calibrated=False)


FORMAT = register(OnnxInt8Format())
