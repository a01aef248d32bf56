"""``keras-int8``: a ``.keras`` file of the model after Keras's own ``model.quantize("int8")``, judged by the gates."""
from __future__ import annotations

from kerasio.formats._quantized import KerasQuantizedFormat
from kerasio.formats.base import register


class KerasInt8Format(KerasQuantizedFormat):
    name = "keras-int8"
    filename = "model_int8.keras"
    mode = "int8"
    quantized = "int8 weights (Keras's own model.quantize(\"int8\"))"
    description = "Keras .keras after model.quantize(\"int8\"), verified against the gates"


FORMAT = register(KerasInt8Format())
