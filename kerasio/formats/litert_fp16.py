"""``litert-fp16``: LiteRT with float16 weights (post-training float16 quantization), judged by the gates."""
from __future__ import annotations

from typing import Any

from kerasio.backends.environment import require
from kerasio.formats._quantized import quantization_info
from kerasio.formats.base import ExportContext, register
from kerasio.formats.litert import LiteRTFormat

SCHEME = "float16 weights (LiteRT post-training float16 quantization), float32 compute and I/O"


class LiteRTFloat16Format(LiteRTFormat):
    name = "litert-fp16"
    filename = "model_fp16.tflite"
    quantized = SCHEME
    description = "LiteRT with float16 weights, verified against the float model's gates (top-1, SNR)"

    def configure(self, converter: Any, ctx: ExportContext) -> dict[str, Any]:
        tf = require("tensorflow", "exporting LiteRT")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        return quantization_info(ctx, SCHEME, calibrated=False)


FORMAT = register(LiteRTFloat16Format())
