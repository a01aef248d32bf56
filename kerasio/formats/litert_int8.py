"""``litert-int8``: LiteRT full-integer post-training quantization, calibrated on the reference inputs."""
from __future__ import annotations

from typing import Any

from kerasio.backends.environment import require
from kerasio.backends.tensorflow import tf_input_names
from kerasio.formats._quantized import quantization_info, representative_rows
from kerasio.formats.base import ExportContext, register
from kerasio.formats.litert import LiteRTFormat

SCHEME = "int8 weights and activations (LiteRT full-integer post-training quantization), float32 I/O"


class LiteRTInt8Format(LiteRTFormat):
    name = "litert-int8"
    filename = "model_int8.tflite"
    quantized = SCHEME
    description = "LiteRT full-integer int8, calibrated on the reference inputs, verified against the gates"

    def configure(self, converter: Any, ctx: ExportContext) -> dict[str, Any]:
        """Every op in int8 (``TFLITE_BUILTINS_INT8``: an op without an int8 kernel fails the conversion), the
        ranges calibrated on the reference rows; the inputs and outputs stay float32, as the signature says."""
        tf = require("tensorflow", "exporting LiteRT")
        keys = dict(zip(ctx.iospec.input_names, tf_input_names(ctx.iospec)))

        def dataset() -> Any:
            for row in representative_rows(ctx.reference_inputs):
                yield {keys[name]: value.astype("float32") if value.dtype.kind == "f" else value
                       for name, value in row.items()}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return quantization_info(ctx, SCHEME, calibrated=True)


FORMAT = register(LiteRTInt8Format())
