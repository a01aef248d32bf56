"""``keras-int4``: a ``.keras`` file of the model after Keras's own ``model.quantize("int4")``, judged by the gates."""
from __future__ import annotations

from kerasio.formats._quantized import KerasQuantizedFormat
from kerasio.formats.base import register


class KerasInt4Format(KerasQuantizedFormat):
    name = "keras-int4"
    filename = "model_int4.keras"
    mode = "int4"
    quantized = "int4 weights (Keras's own model.quantize(\"int4\"))"
    description = "Keras .keras after model.quantize(\"int4\"), verified against the gates"


FORMAT = register(KerasInt4Format())
