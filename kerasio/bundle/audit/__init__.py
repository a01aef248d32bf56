"""Audits of what a runtime will execute, run before the runtime builds anything from an artifact.

One module per artifact family: :mod:`.keras` (the ``.keras`` archive, Keras
configs and their weight files), :mod:`.savedmodel`, :mod:`.onnx` and
:mod:`.litert`. Each format's ``load`` calls its audit first, in whichever
process loads it (the caller's, for a trusted bundle; the bounded worker's
otherwise). An audit reads the file as data: nothing is constructed, imported
or allocated from it before the audit passes.
"""
from kerasio.bundle.audit.keras import archive_limits, audit_config, audit_keras_file, read_keras_config
from kerasio.bundle.audit.litert import audit_litert
from kerasio.bundle.audit.onnx import audit_onnx
from kerasio.bundle.audit.savedmodel import (
    INFERENCE_OPS,
    INIT_OPS,
    SAVER_OPS,
    allowing_ops,
    audit_saved_model,
    read_saved_model_proto,
)

__all__ = ["archive_limits", "audit_config", "audit_keras_file", "read_keras_config", "audit_saved_model",
           "read_saved_model_proto", "allowing_ops", "INFERENCE_OPS", "INIT_OPS", "SAVER_OPS", "audit_onnx",
           "audit_litert"]
