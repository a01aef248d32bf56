"""``onnx``: the frozen forward pass converted by tf2onnx, with the model's own I/O names, run by onnxruntime."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from kerasio.backends.environment import require
from kerasio.backends.tensorflow import tf_input_names, tf_input_specs
from kerasio.bundle.audit.onnx import audit_onnx
from kerasio.errors import ArtifactError
from kerasio.formats._tf_common import endpoint, forward_function
from kerasio.formats.base import ExportContext, Format, Runner, register
from kerasio.spec.divergence import LayerOutput, read_layers
from kerasio.spec.iospec import IOSpec, TensorSpec

OPSET = 17
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
                "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
                "tensor(bool)": "bool", "tensor(string)": "string"}


class OnnxFormat(Format):
    name = "onnx"
    filename = "model.onnx"
    runtime = "onnxruntime"
    suffixes = (".onnx",)
    description = "ONNX graph (tf2onnx), verified in onnxruntime"
    repro_code = """
import onnxruntime as ort


def run(path, inputs):
    provider = "CUDAExecutionProvider" if DEVICE == "gpu" else "CPUExecutionProvider"
    session = ort.InferenceSession(path, providers=[provider])
    return dict(zip(OUTPUT_NAMES, session.run(OUTPUT_NAMES, {name: inputs[name] for name in INPUT_NAMES})))
"""

    def supports(self, iospec: IOSpec) -> str | None:
        if iospec.has_string_inputs() or iospec.lookup_layers():
            return ("tf2onnx cannot convert TensorFlow's string and lookup-table ops (StringSplitV2, "
                    "StaticRegexReplace, LookupTableFindV2) that text preprocessing uses")
        return None

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        """Freeze the forward pass as tf2onnx's own ``from_function`` does, convert it, name the graph's I/O.

        ``model.export(format="onnx")`` calls ``tf2onnx.convert.from_function``,
        which freezes the function with control flow kept as functional
        ``While`` loops (``lower_control_flow=False``, what converts a
        recurrent layer to an ONNX ``Loop``) and inlines its calls. Its
        freezing leaves an adapted ``Normalization``'s captured mean and
        variance as unbound graph *inputs*, which onnxruntime refuses to run
        without; freezing every capture here, with the same settings, gives a
        self-contained graph whose inputs are exactly the model's. Should this
        route fail, the library's own call is tried, and kept only when its
        graph's inputs are the model's.
        """
        onnx = require("onnx", "exporting ONNX")
        require("tf2onnx", "exporting ONNX")
        require("tensorflow", "exporting ONNX")

        iospec = ctx.iospec
        function = endpoint(forward_function(model, iospec), iospec)
        with _converter_errors() as said:
            try:
                graph_model, renames = _frozen_route(function, iospec)
                route = "frozen"
            except Exception as first:  # the converter's own error types; its route is the fallback
                try:
                    graph_model, renames = _library_route(function, iospec)
                except Exception:
                    raise first from None
                route = "tf2onnx.from_function"
        _rename_io(graph_model.graph, renames)
        unsupported = [line for line in said if line.startswith("Unsupported ops")]
        if unsupported:  # tf2onnx keeps going past ops it cannot convert; the graph it writes is then invalid
            raise ValueError(f"tf2onnx: {unsupported[0]} (Keras's own model.export(format='onnx') calls the same "
                             "converter)\n" + "\n".join(said))
        onnx.checker.check_model(graph_model)
        onnx.save(graph_model, str(dest))
        return {"opset": OPSET, "route": route}

    def available_devices(self, backend: str) -> list[str]:
        ort = require("onnxruntime", "running ONNX")
        return ["cpu", "gpu"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["cpu"]

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:
        ort = require("onnxruntime", "running ONNX")
        require("onnx", "reading ONNX")

        audit_onnx(path)  # external data, custom ops, recursion and sizes, before onnxruntime sees the file
        providers = ["CUDAExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{path}: onnxruntime could not load it; re-export it. "
                                f"Received: {str(exc)[:300]}") from None
        ins = [i.name for i in session.get_inputs()]
        outs = [o.name for o in session.get_outputs()]
        if iospec is None:
            iospec = IOSpec(inputs=[_spec(i) for i in session.get_inputs()],
                                  outputs=[_spec(o) for o in session.get_outputs()],
                                  input_structure="dict", output_structure="dict")
        if sorted(ins) != sorted(iospec.input_names) or not set(iospec.output_names) <= set(outs):
            raise ArtifactError(
                f"{path}: the ONNX graph's inputs {ins} and outputs {outs} do not match the manifest's signature "
                f"{iospec.describe()}. Re-export the bundle. Received: inputs={ins}, outputs={outs}"
            )
        wanted = iospec.output_names

        def run(inputs: Any) -> dict[str, Any]:
            return dict(zip(wanted, session.run(wanted, {n: np.asarray(inputs[n]) for n in ins})))

        return Runner(run, format=self.name, path=path, runtime="onnxruntime", backend="onnxruntime",
                      iospec=iospec, device=device, model=session, info={"providers": session.get_providers()})

    def intermediates(self, runner: Runner, inputs: Mapping[str, np.ndarray],
                      layers: Sequence[LayerOutput]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Each layer's tensor, made a graph output of a private copy of the (already audited) graph and run.

        A node is found by its name, which tf2onnx keeps from the TensorFlow op (``functional_1/dense_1_2/Relu``);
        its output's type comes from ONNX's shape inference.
        """
        onnx = require("onnx", "reading ONNX")
        ort = require("onnxruntime", "running ONNX")
        graph_model = onnx.load(str(runner.path))
        graph = graph_model.graph
        produced = {(node.name if len(node.output) == 1 else f"{node.name}:{i}"): out
                    for node in graph.node for i, out in enumerate(node.output) if out}
        typed = {v.name: v for v in onnx.shape_inference.infer_shapes(graph_model).graph.value_info}
        typed.update({v.name: v for v in graph.output})

        def fetch(names: list[str]) -> dict[str, np.ndarray]:
            tensors = list(dict.fromkeys(produced[n] for n in names if produced[n] in typed))
            known = {o.name for o in graph.output}
            graph.output.extend(typed[t] for t in tensors if t not in known)
            providers = ["CUDAExecutionProvider"] if runner.device == "gpu" else ["CPUExecutionProvider"]
            session = ort.InferenceSession(graph_model.SerializeToString(), providers=providers)
            feeds = {i.name: np.asarray(inputs[i.name]) for i in session.get_inputs()}
            values = dict(zip(tensors, session.run(tensors, feeds)))
            return {n: values[produced[n]] for n in names if produced[n] in values}

        return read_layers(layers, list(produced), fetch)

    def precheck(self, path: Path) -> None:
        require("onnx", "reading ONNX")
        audit_onnx(path)  # the onnx package only: a protobuf read within its own recursion and size limits

    def describe(self, path: Path) -> dict[str, Any]:
        onnx = require("onnx", "reading ONNX")
        graph = onnx.load(str(path), load_external_data=False).graph
        return {"inputs": [i.name for i in graph.input], "outputs": [o.name for o in graph.output]}


@contextlib.contextmanager
def _converter_errors() -> Iterator[list[str]]:
    """tf2onnx's ERROR log lines during a conversion, collected (not printed): they become the skip's reason."""
    said: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    logger = logging.getLogger("tf2onnx")
    handler, propagate = Collect(logging.ERROR), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield said
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _frozen_route(function: Any, iospec: IOSpec) -> tuple[Any, dict[str, str]]:
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = function.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    graph_model, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(add_shapes=True), input_names=[t.name for t in frozen.inputs],
        output_names=[t.name for t in frozen.outputs], opset=OPSET,
    )
    renames = {f"{tf_name}:0": spec.name for tf_name, spec in zip(tf_input_names(iospec), iospec.inputs)}
    # A dict's outputs flatten in sorted-key order (tf.nest), which is the order of frozen.outputs.
    renames.update({t.name: name for t, name in zip(frozen.outputs, sorted(iospec.output_names))})
    return graph_model, renames


def _library_route(function: Any, iospec: IOSpec) -> tuple[Any, dict[str, str]]:
    """``tf2onnx.convert.from_function``, as Keras's exporter calls it; refused if it left captures as inputs."""
    import tf2onnx

    graph_model, _ = tf2onnx.convert.from_function(function, input_signature=tf_input_specs(iospec), opset=OPSET)
    names = [i.name for i in graph_model.graph.input]
    if sorted(names) != sorted(tf_input_names(iospec)):
        raise ValueError(f"tf2onnx.from_function left captured values as graph inputs: {names}")
    return graph_model, dict(zip(tf_input_names(iospec), iospec.input_names))  # outputs keep their own names


def _spec(node: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorSpec(node.name, _ONNX_DTYPES.get(node.type, "float32"), shape)


def _rename_io(graph: Any, renames: dict[str, str]) -> None:
    """Give the graph's inputs and outputs the signature's names (the converter says ``Identity:0``)."""
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)


FORMAT = register(OnnxFormat())
