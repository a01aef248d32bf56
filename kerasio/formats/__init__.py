"""The format registry: one module per format, each registering itself.

``REGISTRY`` maps a name to its :class:`~kerasio.formats.base.Format`; export,
load, verify, the CLI and the tests all iterate over it. Importing this
package imports no ML framework.
"""
from .base import REGISTRY, ExportContext, Format, Runner, get_format, register, resolve_formats
from . import keras_native, savedmodel, h5, weights, onnx, litert, pickle_format  # noqa: F401  (registration)

__all__ = ["REGISTRY", "ExportContext", "Format", "Runner", "get_format", "register", "resolve_formats"]
