"""``onnx``: the frozen forward pass converted by tf2onnx, with the model's own I/O names, run by onnxruntime."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
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
DIRECTORY, GRAPH, DATA = "onnx", "model.onnx", "model.onnx.data"  # a graph whose weights are kept beside it
EXTERNAL_ABOVE = 1_500_000_000  # bytes of weights above which they go to DATA: protobuf stops at 2 GiB
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
                "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
                "tensor(bool)": "bool", "tensor(string)": "string"}


class OnnxFormat(Format):
    name = "onnx"
    filename = "model.onnx"
    runtime = "onnxruntime"
    suffixes = (".onnx",)
    description = "ONNX graph (tf2onnx), verified in onnxruntime; weights over 1.5 GB as hashed external data"
    options = {"external_data_above": "write the weights beside the graph (onnx/model.onnx + model.onnx.data, both "
                                      "hashed) when the model holds more than this many bytes (default 1.5e9)"}
    repro_code = """
import onnxruntime as ort


def run(path, inputs):
    provider = "CUDAExecutionProvider" if DEVICE == "gpu" else "CPUExecutionProvider"
    graph = Path(path, "model.onnx") if Path(path).is_dir() else Path(path)  # weights beside it: a directory
    session = ort.InferenceSession(str(graph), providers=[provider])
    return dict(zip(OUTPUT_NAMES, session.run(OUTPUT_NAMES, {name: inputs[name] for name in INPUT_NAMES})))
"""

    def supports(self, iospec: IOSpec) -> str | None:
        if iospec.has_string_inputs() or iospec.lookup_layers():
            return ("tf2onnx cannot convert TensorFlow's string and lookup-table ops (StringSplitV2, "
                    "StaticRegexReplace, LookupTableFindV2) that text preprocessing uses")
        return None

    def relpath(self, bundle: Path, ctx: ExportContext | None = None) -> str:
        """``model.onnx``; ``onnx/`` (the graph and its external data) for a model over ``external_data_above``."""
        above = float((ctx.options if ctx else {}).get("external_data_above", EXTERNAL_ABOVE))
        return DIRECTORY if ctx is not None and ctx.weights_bytes > above else self.filename

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
        external = dest.name == DIRECTORY
        with _converter_errors() as said:
            if external:  # a frozen graph over 2 GiB cannot be serialized: its weights are set aside
                graph_model, renames, aside = _large_route(function, iospec)
                route = "frozen, weights streamed beside the graph"
            else:
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
        if not external:
            onnx.checker.check_model(graph_model)
            onnx.save(graph_model, str(dest))
            return {"opset": OPSET, "route": route}
        dest.mkdir()
        onnx.save_model(graph_model, str(dest / GRAPH), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA, size_threshold=1024)  # the graph's own constants first, then the weights
        graph_model = onnx.load(str(dest / GRAPH), load_external_data=False)
        _weights_beside(graph_model.graph, aside, dest / DATA)
        onnx.save(graph_model, str(dest / GRAPH))
        onnx.checker.check_model(str(dest / GRAPH))  # by path: the checker reads the external data itself
        return {"opset": OPSET, "route": route, "external_data": DATA}

    def available_devices(self, backend: str) -> list[str]:
        ort = require("onnxruntime", "running ONNX")
        return ["cpu", "gpu"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["cpu"]

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:
        ort = require("onnxruntime", "running ONNX")
        require("onnx", "reading ONNX")

        graph = _graph(path)
        audit_onnx(graph, external=graph != path)  # external data, custom ops, recursion and sizes, first
        providers = ["CUDAExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(graph), providers=providers)
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
        source = _graph(runner.path)
        graph_model = onnx.load(str(source), load_external_data=False)  # a private copy; the weights stay where
        graph = graph_model.graph                                          # they are
        produced = {(node.name if len(node.output) == 1 else f"{node.name}:{i}"): out
                    for node in graph.node for i, out in enumerate(node.output) if out}
        typed = {v.name: v for v in onnx.shape_inference.infer_shapes(graph_model).graph.value_info}
        typed.update({v.name: v for v in graph.output})

        def fetch(names: list[str]) -> dict[str, np.ndarray]:
            tensors = list(dict.fromkeys(produced[n] for n in names if produced[n] in typed))
            known = {o.name for o in graph.output}
            graph.output.extend(typed[t] for t in tensors if t not in known)
            providers = ["CUDAExecutionProvider"] if runner.device == "gpu" else ["CPUExecutionProvider"]
            if source == runner.path:
                session = ort.InferenceSession(graph_model.SerializeToString(), providers=providers)
            else:  # the copy beside links to the artifact's external data, in this process's own directory
                private = Path(tempfile.mkdtemp(prefix="kerasio-explain-onnx-"))
                for part in runner.path.iterdir():
                    if part.name != GRAPH:
                        os.symlink(part.resolve(), private / part.name)
                onnx.save(graph_model, str(private / GRAPH))
                session = ort.InferenceSession(str(private / GRAPH), providers=providers)
            feeds = {i.name: np.asarray(inputs[i.name]) for i in session.get_inputs()}
            values = dict(zip(tensors, session.run(tensors, feeds)))
            return {n: values[produced[n]] for n in names if produced[n] in values}

        return read_layers(layers, list(produced), fetch)

    def precheck(self, path: Path) -> None:
        require("onnx", "reading ONNX")
        graph = _graph(path)
        audit_onnx(graph, external=graph != path)  # the onnx package only: a bounded protobuf read

    def describe(self, path: Path) -> dict[str, Any]:
        onnx = require("onnx", "reading ONNX")
        graph = onnx.load(str(_graph(path)), load_external_data=False).graph
        return {"inputs": [i.name for i in graph.input], "outputs": [o.name for o in graph.output]}

    def matches(self, path: Path) -> bool:
        return (path.is_file() and path.suffix == ".onnx") or (path.is_dir() and (path / GRAPH).is_file())


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


def _graph(path: Path) -> Path:
    """The graph file of an ONNX artifact: the file itself, or a directory's ``model.onnx``."""
    return path / GRAPH if path.is_dir() else path


KEPT_ASIDE = 1 << 20  # bytes: a variable this large stays out of the converted graph, its bytes streamed to DATA


def _large_route(function: Any, iospec: IOSpec) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """A graph over 2 GiB, converted without ever holding it whole: ``(graph, renames, {input: variable})``.

    The forward pass is traced and frozen as the frozen route freezes it, except that every variable over
    :data:`KEPT_ASIDE` stays out: its resource placeholder becomes a placeholder of its value's dtype and shape,
    its reads identities. tf2onnx converts that small graph with those weights as inputs; :meth:`OnnxFormat.save`
    then makes each an initializer whose bytes it writes to the external data file from the Keras variable
    itself, one variable at a time (TensorFlow's own freezing would build the whole graph as one protobuf,
    which stops at 2 GiB, and tf2onnx's large-model path holds the weights three times over).
    """
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        _FunctionConverterDataInEager,
        _replace_variables_by_constants,
    )

    concrete = function.get_concrete_function()
    owners = {id(v.handle): v for v in concrete.graph.variables}
    aside = {}
    for value, placeholder in concrete.graph.captures:
        variable = owners.get(id(value))
        if variable is not None and int(np.prod(variable.shape)) * variable.dtype.size > KEPT_ASIDE:
            aside[placeholder.op.name] = variable
    data = _FunctionConverterDataInEager(func=concrete, lower_control_flow=False, aggressive_inlining=True,
                                         variable_names_denylist=set(aside))
    graph_def, _ = _replace_variables_by_constants(converter_data=data)
    for node in graph_def.node:
        if node.name in aside:  # the resource placeholder: now one of the weights' value
            variable = aside[node.name]
            node.attr["dtype"].type = variable.dtype.as_datatype_enum
            node.attr["shape"].shape.CopyFrom(variable.shape.as_proto())
        elif node.op == "ReadVariableOp" and node.input and node.input[0].split(":")[0] in aside:
            node.op = "Identity"
            node.attr["T"].type = node.attr["dtype"].type
            del node.attr["dtype"]
    inputs = [t.name for t in concrete.inputs[:len(iospec.inputs)]] + [f"{name}:0" for name in aside]
    graph_model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs,
                                                    output_names=[t.name for t in concrete.outputs], opset=OPSET)
    renames = {f"{tf_name}:0": spec.name for tf_name, spec in zip(tf_input_names(iospec), iospec.inputs)}
    renames.update({t.name: name for t, name in zip(concrete.outputs, sorted(iospec.output_names))})
    return graph_model, renames, {f"{name}:0": variable for name, variable in aside.items()}


def _weights_beside(graph: Any, aside: Mapping[str, Any], data: Path) -> None:
    """Make each set-aside weight an initializer whose bytes are in ``data``, written one variable at a time."""
    import onnx

    kept = {i.name for i in graph.input} - set(aside)
    inputs = [i for i in graph.input if i.name in kept]
    del graph.input[:]
    graph.input.extend(inputs)
    with open(data, "ab") as out:
        for name, variable in aside.items():
            value = np.ascontiguousarray(variable.numpy())
            offset = out.tell()
            out.write(value.tobytes())
            tensor = onnx.TensorProto(name=name, dims=list(value.shape),
                                      data_type=onnx.helper.np_dtype_to_tensor_dtype(value.dtype),
                                      data_location=onnx.TensorProto.EXTERNAL)
            for key, field in (("location", data.name), ("offset", str(offset)), ("length", str(value.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, field
            graph.initializer.append(tensor)
            del value


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
