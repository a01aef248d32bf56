"""``openvino``: the forward pass converted by OpenVINO's TensorFlow frontend, as Keras's own exporter converts it,
with the model's own I/O names, run by the OpenVINO runtime with its inference precision pinned to f32."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kerasio.backends.environment import require
from kerasio.backends.tensorflow import tf_input_names
from kerasio.bundle.audit.openvino import audit_openvino, ir_files
from kerasio.errors import ArtifactError
from kerasio.formats._tf_common import endpoint, forward_function
from kerasio.formats.base import ExportContext, Format, Runner, register
from kerasio.spec.divergence import LayerOutput, read_layers
from kerasio.spec.iospec import IOSpec, TensorSpec
from kerasio.spec.tolerances import Tolerance

XML, BIN = "model.xml", "model.bin"
PRECISION = {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU plugin runs bf16 or f16 by default where the CPU has them
_DTYPES = {"f32": "float32", "f64": "float64", "f16": "float16", "i32": "int32", "i64": "int64", "u8": "uint8",
           "i8": "int8", "boolean": "bool"}


class OpenVINOFormat(Format):
    name = "openvino"
    filename = "openvino"
    runtime = "openvino"
    save_backend = "tensorflow"  # the TensorFlow frontend converts the traced forward pass
    description = "OpenVINO IR (model.xml + model.bin), verified in the OpenVINO runtime at f32"
    tolerances = (
        Tolerance("openvino", "*", "*", "float32", "*", 1e-5, 1e-5,
                  "OpenVINO's CPU plugin (oneDNN) has its own kernels and summation order; f32 inference pinned"),
    )
    repro_code = """
import openvino as ov


def run(path, inputs):
    xml = next(Path(path).glob("*.xml"))
    device = "GPU" if DEVICE == "gpu" else "CPU"
    compiled = ov.Core().compile_model(str(xml), device, {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled({key: inputs[name] for key, name in zip(INPUT_KEYS, INPUT_NAMES)})
    by_name = {name: value for port, value in out.items() for name in port.get_names()}
    return {name: by_name[name] for name in OUTPUT_NAMES}
"""

    def supports(self, iospec: IOSpec) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return "OpenVINO is not installed here (pip install 'kerasio[openvino]')"
        if iospec.has_string_inputs() or iospec.lookup_layers():
            return ("OpenVINO's core opsets have no string or lookup-table ops (they need the openvino-tokenizers "
                    "extension, which kerasio does not load)")
        return None

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        """Convert the traced forward pass (``ov.convert_model`` of its concrete function, as ``model.export(
        format="openvino")`` does under TensorFlow), name the inputs, and serialize at full precision.

        ``ov.save_model`` compresses weights to f16 by default; this writes them as they are.
        """
        ov = require("openvino", "exporting OpenVINO")
        require("tensorflow", "exporting OpenVINO")
        iospec = ctx.iospec
        concrete = endpoint(forward_function(model, iospec), iospec).get_concrete_function()
        converted = ov.convert_model(concrete)
        for port, name in zip(converted.inputs, tf_input_names(iospec)):
            port.get_node().set_friendly_name(name)
            port.get_tensor().set_names({name})
        names = {n for port in converted.outputs for n in port.get_names()}
        missing = [n for n in iospec.output_names if n not in names]
        if missing:
            raise ValueError(f"OpenVINO's converter named the outputs {sorted(names)}, not {missing}")
        dest.mkdir(parents=True)
        ov.save_model(converted, str(dest / XML), compress_to_fp16=False)
        return {"openvino": ov.__version__.split("-")[0]}

    def available_devices(self, backend: str) -> list[str]:
        ov = require("openvino", "running OpenVINO")
        return ["cpu", "gpu"] if any(d.startswith("GPU") for d in ov.Core().available_devices) else ["cpu"]

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:
        ov = require("openvino", "running OpenVINO")
        audit_openvino(path)  # before the runtime reads the XML or maps the weights
        xml, _ = ir_files(path)
        core = ov.Core()
        try:  # compiled from the file: the weights are mapped, not read into a model and copied again
            compiled = core.compile_model(str(xml), "GPU" if device == "gpu" else "CPU", PRECISION)
        except Exception as exc:  # the runtime raises its own types for a malformed IR
            raise ArtifactError(f"{path}: the OpenVINO runtime could not load it; re-export it. Received: "
                                f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
        if iospec is None:
            iospec = IOSpec(inputs=[_spec(p) for p in compiled.inputs], outputs=[_spec(p) for p in compiled.outputs],
                            input_structure="dict", output_structure="dict")
        keys = dict(zip(tf_input_names(iospec), iospec.input_names))
        given = {p.get_any_name() for p in compiled.inputs}
        if set(keys) != given:
            keys = dict(zip(sorted(given), sorted(iospec.input_names))) if len(given) == len(keys) else keys
        if set(keys) != given:
            raise ArtifactError(f"{path}: the IR takes {sorted(given)}, not the manifest's {iospec.input_names}. "
                                f"Re-export it. Received: {sorted(given)}")
        ports = {name: port for port in compiled.outputs for name in port.get_names()}
        missing = [n for n in iospec.output_names if n not in ports]
        if missing:
            raise ArtifactError(f"{path}: the IR returns {sorted(ports)}, not the manifest's {missing}. Re-export it. "
                                f"Received: {sorted(ports)}")
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin applied, as an element type
        precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        request = compiled.create_infer_request()

        def run(inputs: Any) -> dict[str, Any]:
            out = request.infer({key: np.asarray(inputs[name]) for key, name in keys.items()})
            return {name: np.array(out[ports[name]]) for name in iospec.output_names}  # copies: buffers are reused

        return Runner(run, format=self.name, path=path, runtime="openvino", backend="openvino", iospec=iospec,
                      device=device, model=compiled,
                      info={"inference_precision": precision, "openvino": ov.__version__.split("-")[0]})

    def intermediates(self, runner: Runner, inputs: Mapping[str, np.ndarray],
                      layers: Sequence[LayerOutput]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Each layer's node made a model output of a private copy, compiled at f32 and run; nodes keep the
        TensorFlow ops' names (``functional_1/dense_1_2/Relu``)."""
        ov = require("openvino", "running OpenVINO")
        xml, _ = ir_files(runner.path)
        core = ov.Core()
        model = core.read_model(str(xml))
        nodes = {op.get_friendly_name(): op for op in model.get_ops() if op.get_output_size() == 1}

        def fetch(names: list[str]) -> dict[str, np.ndarray]:
            tags = {n: f"kerasio-layer:{n}" for n in names}  # a name of its own for each tensor read
            for n, tag in tags.items():
                nodes[n].output(0).get_tensor().add_names({tag})
            model.add_outputs(list(tags.values()))
            request = core.compile_model(model, "CPU", PRECISION).create_infer_request()
            keys = dict(zip(tf_input_names(runner.iospec), runner.iospec.input_names))
            request.infer({k: np.asarray(inputs[v]) for k, v in keys.items()})
            values = {}
            for n, tag in tags.items():  # a tensor already among the outputs keeps its own names there
                for name in (tag, *sorted(nodes[n].output(0).get_tensor().get_names())):
                    try:
                        values[n] = np.array(request.get_tensor(name).data)
                        break
                    except RuntimeError:
                        continue
            return values

        return read_layers(layers, list(nodes), fetch)

    def matches(self, path: Path) -> bool:
        return path.is_dir() and len(list(path.glob("*.xml"))) == 1

    def precheck(self, path: Path) -> None:
        audit_openvino(path)  # the standard library only: no runtime reads the file

    def describe(self, path: Path) -> dict[str, Any]:
        """The IR's input and output names, read from the XML without the runtime."""
        import xml.etree.ElementTree as ET

        xml, _ = ir_files(path)
        root = ET.parse(xml).getroot()

        layers = {layer.get("id"): layer for layer in root.iter("layer")}

        def tensor_names(layer: Any, port_id: str | None = None) -> str:
            port = layer.find(f"./output/port[@id='{port_id}']" if port_id else "./output/port")
            return (port.get("names") if port is not None else None) or layer.get("name", "")

        inputs = [tensor_names(layer) for layer in layers.values() if layer.get("type") == "Parameter"]
        outputs = []
        for edge in root.iter("edge"):  # what feeds each Result: that port's tensor names
            if layers.get(edge.get("to-layer"), ET.Element("x")).get("type") == "Result":
                source = layers.get(edge.get("from-layer"))
                outputs.append(tensor_names(source, edge.get("from-port")) if source is not None else "")
        return {"inputs": inputs, "outputs": outputs, "xml": xml.name}


def _spec(port: Any) -> TensorSpec:
    shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), _DTYPES.get(port.get_element_type().get_type_name(), "float32"), shape)


FORMAT = register(OpenVINOFormat())
