"""``onnx-int8-static``: the ONNX graph with int8 weights and activations calibrated on the reference inputs
(onnxruntime's static quantization, QDQ), judged by the gates."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kerasio.formats._quantized import OnnxQuantizedFormat, quantization_info, representative_rows
from kerasio.formats.base import ExportContext, register

SCHEME = "int8 weights and activations calibrated on the reference inputs (onnxruntime static quantization, QDQ)"


class OnnxInt8StaticFormat(OnnxQuantizedFormat):
    name = "onnx-int8-static"
    filename = "model_int8_static.onnx"
    quantized = SCHEME
    description = "ONNX with int8 weights and activations (static, calibrated), verified against the gates"

    def quantize(self, source: Path, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class Rows(CalibrationDataReader):
            def __init__(self) -> None:
                self.rows = representative_rows(ctx.reference_inputs)

            def get_next(self) -> dict[str, Any] | None:
                return next(self.rows, None)

        quantize_static(str(source), str(dest), Rows(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return quantization_info(ctx, SCHEME, calibrated=True)


FORMAT = register(OnnxInt8StaticFormat())
