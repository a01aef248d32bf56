"""The format registry: one module per format, each registering itself.

``REGISTRY`` maps a name to its :class:`~kerasio.formats.base.Format`; export,
load, verify, the worker, the CLI and the tests all iterate over it. Importing
this package imports no ML framework.
"""
# ruff: noqa: I001  (registration order matters; see below)
from kerasio.formats.base import (
    REGISTRY,
    ExportContext,
    Format,
    Runner,
    explicit,
    get_format,
    register,
    resolve_formats,
)

# Registration order is the order of --formats all and of every table: keep it (no import sorting here).
from kerasio.formats import keras_native, savedmodel, h5, weights, onnx, litert, openvino, torch_program, pickle_format  # noqa: F401,E501
# The quantized variants, each judged by gates against the float model (named explicitly; not in "all").
from kerasio.formats import litert_fp16, litert_int8, onnx_int8, onnx_int8_static, keras_int8, keras_int4, keras_float8  # noqa: F401,E501

__all__ = ["REGISTRY", "ExportContext", "Format", "Runner", "explicit", "get_format", "register", "resolve_formats"]
