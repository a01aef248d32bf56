"""``litert``: a ``.tflite`` flatbuffer with a named ``serving_default`` signature, run by the LiteRT interpreter."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from kerasio.backends.environment import require
from kerasio.backends.tensorflow import tf_input_names
from kerasio.bundle.audit.litert import audit_litert
from kerasio.errors import ArtifactError, BackendUnavailableError
from kerasio.formats._tf_common import endpoint, forward_function, write_saved_model
from kerasio.formats.base import ExportContext, Format, Runner, register
from kerasio.present.text import first_error_line
from kerasio.spec.divergence import LayerOutput, read_layers
from kerasio.spec.iospec import IOSpec, TensorSpec, dtype_name


def _interpreter_class() -> Any:
    try:
        return require("ai_edge_litert.interpreter", "running LiteRT").Interpreter
    except BackendUnavailableError:
        return require("tensorflow", "running LiteRT").lite.Interpreter


class LiteRTFormat(Format):
    name = "litert"
    filename = "model.tflite"
    runtime = "litert"
    suffixes = (".tflite",)
    description = "LiteRT flatbuffer (.tflite), verified in the LiteRT interpreter"
    repro_code = """
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # the interpreter TensorFlow still ships
    from tensorflow.lite import Interpreter


def run(path, inputs):
    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    out = runner(**{key: inputs[name] for key, name in zip(INPUT_KEYS, INPUT_NAMES)})
    keys = OUTPUT_NAMES if set(OUTPUT_NAMES) <= set(out) else list(out)
    return {name: out[key] for name, key in zip(OUTPUT_NAMES, keys)}
"""

    def supports(self, iospec: IOSpec) -> str | None:
        if iospec.has_string_inputs() or iospec.lookup_layers():
            return "LiteRT has no string tensors or lookup-table ops among its builtins (they need TF Select/Flex)"
        if iospec.recurrent_layers():
            return (f"LiteRT's builtins cannot run Keras 3's recurrent loop ({', '.join(iospec.recurrent_layers())}): "
                    "the converter, as Keras's own model.export(format='litert') calls it, leaves TensorList "
                    "ops to TF Select (Flex), which the LiteRT runtime does not ship")
        if iospec.compute_dtype != "float32":
            return (f"LiteRT has no {iospec.compute_dtype} MatMul/BiasAdd builtins for a mixed precision model "
                    "(they need TF Select/Flex ops, which the LiteRT runtime does not ship)")
        return None

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        """Convert a SavedModel's ``serving_default``, which keeps the signature's input and output names.

        The SavedModel is this export's own ``savedmodel`` artifact when it wrote one (a classification's
        ``class_id`` then comes along as one more output), otherwise a temporary one of the forward pass.
        ``TFLiteConverter.from_concrete_functions`` leaves Keras 3's resource variables uninitialised (the
        interpreter returns garbage); the SavedModel path converts them to constants.
        """
        tf = require("tensorflow", "exporting LiteRT")

        with tempfile.TemporaryDirectory(prefix=".litert-", dir=dest.parent) as tmp:
            source = ctx.written.get("savedmodel")
            converted_from = "savedmodel" if source is not None else "its own SavedModel"
            if source is None:
                source = Path(tmp) / "savedmodel"
                write_saved_model(model, source, {"serving_default": endpoint(forward_function(model, ctx.iospec),
                                                                              ctx.iospec)})
            with _native_stderr(Path(tmp) / "converter.log") as log:
                try:
                    converter = tf.lite.TFLiteConverter.from_saved_model(str(source),
                                                                         signature_keys=["serving_default"])
                    made = self.configure(converter, ctx)
                    data = converter.convert()
                except Exception as exc:  # the converter's own error, and what its MLIR passes printed
                    said = log.read_text(errors="replace") if log.is_file() else ""
                    raise ValueError(f"LiteRT converter: {first_error_line(str(exc) or said)}\n{exc}\n{said}") \
                        from None
        dest.write_bytes(data)
        return {"converted_from": converted_from, **made}

    def configure(self, converter: Any, ctx: ExportContext) -> dict[str, Any]:
        """Set the converter's options before it converts (a quantized variant's); return facts for ``info``."""
        return {}

    def available_devices(self, backend: str) -> list[str]:
        return ["cpu"]  # the Python interpreter runs on the CPU (XNNPACK); GPU delegates are mobile-only

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:

        audit_litert(path)  # indices, subgraph calls and custom ops, before the interpreter reads the file
        Interpreter = _interpreter_class()
        try:
            interpreter = Interpreter(model_path=str(path))
            runner = interpreter.get_signature_runner("serving_default")
        except Exception as exc:  # ValueError, RuntimeError and whatever a malformed model raises
            raise ArtifactError(f"{path}: the LiteRT interpreter could not load it (or it has no serving_default "
                                f"signature); re-export it. Received: {exc}") from None
        in_details, out_details = runner.get_input_details(), runner.get_output_details()
        if iospec is None:
            iospec = IOSpec(
                inputs=[_spec(k, d) for k, d in sorted(in_details.items())],
                outputs=[_spec(k, d) for k, d in sorted(out_details.items())],
                input_structure="dict", output_structure="dict")
        keys = tf_input_names(iospec)
        if not set(keys) <= set(in_details):
            if len(in_details) == 1 and len(keys) == 1:  # bundles from kerasio 0.1 kept the converter's name
                keys = list(in_details)
            else:
                raise ArtifactError(f"{path}: the LiteRT signature takes {sorted(in_details)}, not the manifest's "
                                    f"{iospec.input_names}. Re-export it. Received: {sorted(in_details)}")
        outs = iospec.output_names
        out_keys = outs if set(outs) <= set(out_details) else list(out_details)
        pairs = list(zip(keys, iospec.input_names))

        def run(inputs: Any) -> dict[str, Any]:
            result = runner(**{key: np.asarray(inputs[name]) for key, name in pairs})
            return {name: np.array(result[key]) for name, key in zip(outs, out_keys)}  # copies: buffers are reused

        Interp = type(interpreter)
        return Runner(run, format=self.name, path=path, runtime="litert", backend="litert", iospec=iospec,
                      device=device, model=interpreter, info={"interpreter": f"{Interp.__module__}.{Interp.__name__}"})

    def intermediates(self, runner: Runner, inputs: Mapping[str, np.ndarray],
                      layers: Sequence[LayerOutput]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Each layer's tensor, kept by an interpreter that preserves every tensor.

        The converter names a tensor after the TensorFlow ops fused into it (``a/MatMul;a/Relu;a/BiasAdd``).
        Preserving every tensor turns off the default delegate (XNNPACK), so these values come from the builtin
        kernels: the layer-by-layer comparison, not the verdict, runs on them.
        """
        with warnings.catch_warnings():  # "intended for debugging purposes only": that is what this is
            warnings.simplefilter("ignore")
            interpreter = _interpreter_class()(model_path=str(runner.path), experimental_preserve_all_tensors=True)
        signature = interpreter.get_signature_runner("serving_default")
        keys = tf_input_names(runner.iospec)
        signature(**{key: np.asarray(inputs[name]) for key, name in zip(keys, runner.iospec.input_names)})
        index: dict[str, int] = {}
        for detail in interpreter.get_tensor_details():
            index.setdefault(detail["name"], detail["index"])
        return read_layers(layers, list(index),
                           lambda names: {n: np.array(interpreter.get_tensor(index[n])) for n in names})

    def precheck(self, path: Path) -> None:
        audit_litert(path)  # pure Python over the flatbuffer: no interpreter

    def describe(self, path: Path) -> dict[str, Any]:
        interpreter = _interpreter_class()(model_path=str(path))
        listing = interpreter.get_signature_list().get("serving_default", {})
        return {"inputs": list(listing.get("inputs", [])), "outputs": list(listing.get("outputs", []))}


@contextlib.contextmanager
def _native_stderr(log: Path) -> Iterator[Path]:
    """File descriptor 2 sent to ``log`` meanwhile: the converter's C++ passes print pages of MLIR there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield log
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _spec(name: str, detail: dict[str, Any]) -> TensorSpec:
    shape = tuple(None if int(d) < 0 else int(d) for d in detail.get("shape_signature", detail["shape"]))
    return TensorSpec(name, dtype_name(np.dtype(detail["dtype"])), (None, *shape[1:]))


FORMAT = register(LiteRTFormat())
