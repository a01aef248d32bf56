"""``keras-float8``: a ``.keras`` file of the model after Keras's own ``model.quantize("float8")``, judged by the gates."""
from __future__ import annotations

from kerasio.formats._quantized import KerasQuantizedFormat
from kerasio.formats.base import register


class KerasFloat8Format(KerasQuantizedFormat):
    name = "keras-float8"
    filename = "model_float8.keras"
    mode = "float8"
    quantized = "float8 weights (Keras's own model.quantize(\"float8\"))"
    description = "Keras .keras after model.quantize(\"float8\"), verified against the gates"


FORMAT = register(KerasFloat8Format())
