"""A model's signature: named inputs and outputs, each with a dtype and a shape of any rank.

Plain data (numpy only). :func:`derive_signature` reads it off a Keras model
(duck-typed, no Keras import here); :meth:`Signature.coerce` turns whatever a
user passes (an array, a list, a dict keyed by input name, or a DataFrame) into
one array per input, checked against the spec, with errors that name the input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from kerasio.errors import ArtifactError, InputError

__all__ = ["TensorSpec", "IOSpec", "derive_iospec", "complete_outputs", "mark_probabilities", "dtype_name",
           "STRUCTURES", "DTYPES"]

STRUCTURES = ("single", "list", "dict")
# The dtypes a signature may name (what Keras, TensorFlow, onnxruntime and LiteRT carry, and numpy can hold).
DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "bool", "string", "complex64", "complex128")
_RECURRENT = frozenset({"LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D",
                        "ConvLSTM3D"})
_LOOKUP = frozenset({"TextVectorization", "StringLookup", "IntegerLookup"})


def dtype_name(dtype: Any) -> str:
    """``"string"`` for str/bytes dtypes, else numpy's name (``float32``, ``int64``, ``bool``)."""
    if isinstance(dtype, np.dtype):
        return "string" if dtype.kind in "USO" else dtype.name
    text = str(getattr(dtype, "name", dtype))  # numpy, TensorFlow and Keras dtypes all have a name
    if text in ("string", "str", "object", "bytes"):
        return "string"
    try:
        parsed = np.dtype(text)
    except TypeError:
        return text
    return "string" if parsed.kind in "USO" else parsed.name


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output.

    Attributes:
        name: the model's own name for it (``keras.Input`` name, output layer name or dict key).
        dtype: ``float32``, ``float16``, ``int32``, ``int64``, ``bool``, ``string``, ...
        shape: batch dimension first; ``None`` for a dimension of any size.
        activation: for outputs, the producing layer's activation when known (``softmax``, ``sigmoid``).
        probabilities: for outputs, whether each row is a probability vector (argmax is compared).
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    activation: str | None = None
    probabilities: bool = False

    @property
    def rank(self) -> int:
        return len(self.shape)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorSpec":
        return cls(name=str(data["name"]), dtype=str(data["dtype"]),
                   shape=tuple(None if d is None else int(d) for d in data["shape"]),
                   activation=data.get("activation"), probabilities=bool(data.get("probabilities", False)))

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}{_shape_text(self.shape)}"


@dataclass
class IOSpec:
    """Named inputs and outputs of a model, and how the model is called.

    Attributes:
        inputs, outputs: the specs, in the model's order.
        input_structure: how the model takes its inputs: one tensor (``single``),
            a ``list`` in order, or a ``dict`` keyed by name.
        output_structure: how it returns its outputs (same three kinds).
        feature_names: column names of a single 2-D input (DataFrame columns).
        model_kind: ``functional``, ``sequential`` or ``subclassed``.
        compute_dtype: ``float32``, or ``float16``/``bfloat16`` under a mixed precision policy.
        layers: the layer class names the model uses (formats decide support from them).
        quantization: Keras's quantization modes of its layers (``model.quantize``: ``int8``, ``int4``,
            ``float8``, ``gptq``; several comma-separated), or ``""`` for a float model.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    input_structure: str = "single"
    output_structure: str = "single"
    feature_names: list[str] | None = None
    model_kind: str = "functional"
    compute_dtype: str = "float32"
    layers: list[str] = field(default_factory=list)
    quantization: str = ""

    @property
    def compute(self) -> str:
        """The tolerance table's compute column: the quantization mode, else the compute dtype."""
        return self.quantization or self.compute_dtype

    # -- facts ----------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def has_string_inputs(self) -> bool:
        return any(s.dtype == "string" for s in self.inputs)

    def recurrent_layers(self) -> list[str]:
        return sorted(set(self.layers) & _RECURRENT)

    def lookup_layers(self) -> list[str]:
        return sorted(set(self.layers) & _LOOKUP)

    def describe(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"({ins}) -> ({outs})"

    # -- conversion -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [s.to_dict() for s in self.inputs]
        data["outputs"] = [s.to_dict() for s in self.outputs]
        if not data["quantization"]:
            del data["quantization"]  # a float model's signature reads as it did before quantization existed
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "IOSpec":
        try:
            return cls(
                inputs=[TensorSpec.from_dict(s) for s in data["inputs"]],
                outputs=[TensorSpec.from_dict(s) for s in data["outputs"]],
                input_structure=str(data.get("input_structure", "single")),
                output_structure=str(data.get("output_structure", "single")),
                feature_names=list(data["feature_names"]) if data.get("feature_names") else None,
                model_kind=str(data.get("model_kind", "functional")),
                compute_dtype=str(data.get("compute_dtype", "float32")),
                layers=[str(x) for x in data.get("layers", [])],
                quantization=str(data.get("quantization") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"the manifest's signature is malformed ({type(exc).__name__}: {exc}). Re-export the bundle. "
                f"Received: signature={str(dict(data))[:200]}"
            ) from None

    # -- calling ----------------------------------------------------------
    def call_structure(self, arrays: Mapping[str, Any]) -> Any:
        """What to pass to the Keras model: one tensor, a list in order, or a dict."""
        if self.input_structure == "dict":
            return {name: arrays[name] for name in self.input_names}
        if self.input_structure == "list":
            return [arrays[name] for name in self.input_names]
        return arrays[self.input_names[0]]

    def name_outputs(self, raw: Any) -> dict[str, Any]:
        """The model's raw output (tensor, list or dict) as ``{output name: value}``."""
        if isinstance(raw, Mapping):
            return {name: raw[name] for name in self.output_names}
        if isinstance(raw, (list, tuple)):
            return dict(zip(self.output_names, raw))
        return {self.output_names[0]: raw}

    def coerce(self, inputs: Any, *, source: str = "inputs") -> dict[str, np.ndarray]:
        """Turn an array, list, dict or DataFrame into ``{input name: array}`` matching the specs.

        A single example (no batch axis) gets one. A ``[None, 1]`` input also
        takes a flat column of values. Numbers are cast to the input's dtype;
        strings stay strings.

        Raises:
            InputError: naming the input, what it expects and what was received.
        """
        mapping = self._as_mapping(inputs, source)
        return {spec.name: _coerce_one(spec, mapping[spec.name], source) for spec in self.inputs}

    def _as_mapping(self, inputs: Any, source: str) -> Mapping[str, Any]:
        names = self.input_names
        if _is_frame(inputs):
            return self._from_frame(inputs, source)
        if isinstance(inputs, Mapping):
            missing = [n for n in names if n not in inputs]
            if missing:
                raise InputError(
                    f"{source}: missing input(s) {missing}. Pass a dict with the keys {names}. "
                    f"Received: keys={list(inputs)}"
                )
            return inputs
        if isinstance(inputs, (list, tuple)) and len(names) > 1:
            if len(inputs) != len(names):
                raise InputError(
                    f"{source}: the model takes {len(names)} inputs {names}; pass one array per input, in that "
                    f"order, or a dict keyed by name. Received: a {type(inputs).__name__} of {len(inputs)} items"
                )
            return dict(zip(names, inputs))
        if len(names) > 1:
            raise InputError(
                f"{source}: the model takes {len(names)} inputs {names}; pass a dict keyed by input name (or a "
                f"list in that order). Received: {type(inputs).__name__}"
            )
        return {names[0]: inputs}

    def _from_frame(self, frame: Any, source: str) -> dict[str, Any]:
        columns = [str(c) for c in frame.columns]
        if len(self.inputs) == 1 and self.inputs[0].rank == 2 and self.feature_names \
                and not (self.inputs[0].shape[1] == 1 and self.inputs[0].name in columns):
            missing = [c for c in self.feature_names if c not in columns]
            if missing:
                raise InputError(
                    f"{source}: missing feature column(s) {missing}; the model expects {self.feature_names}. "
                    f"Add or rename those columns. Received: columns={columns}"
                )
            for name in self.feature_names:
                if frame[name].dtype.kind not in "iufb":
                    raise InputError(
                        f"{source}: column {name!r} is not numeric; convert it to numbers. "
                        f"Received: dtype={frame[name].dtype}"
                    )
            return {self.inputs[0].name: frame[list(self.feature_names)].to_numpy()}
        out = {}
        for spec in self.inputs:
            if spec.name not in columns:
                raise InputError(
                    f"{source}: no column {spec.name!r} for the model's input of that name; tabular inputs are "
                    f"matched by column name ({self.input_names}). For tensor inputs pass a dict of arrays or an "
                    f".npz file. Received: columns={columns}"
                )
            if spec.rank > 2 or (spec.rank == 2 and spec.shape[1] != 1):
                raise InputError(
                    f"{source}: input {spec.describe()} takes more than one value per row, which a table column "
                    f"cannot hold. Pass a dict of arrays or an .npz file. Received: column {spec.name!r}"
                )
            out[spec.name] = frame[spec.name].to_numpy()
        return out


def _is_frame(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "columns")


def _coerce_one(spec: TensorSpec, value: Any, source: str) -> np.ndarray:
    where = f"{source}: input {spec.name!r}"
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where} is not an array ({exc}). Pass one array per input. "
                         f"Received: {type(value).__name__}") from None
    array = _cast(spec, array, where)
    if array.ndim == spec.rank - 1:
        if spec.rank == 2 and spec.shape[1] == 1 and array.ndim == 1 and array.shape[0] != 1:
            array = array[:, None]  # a column of values for a [None, 1] input
        else:
            array = array[None, ...]  # one example: add the batch axis
    wrong = array.ndim != spec.rank or any(
        want is not None and got != want for want, got in zip(spec.shape[1:], array.shape[1:]))
    if wrong:
        raise InputError(
            f"{where} must have shape {_shape_text(spec.shape)} (dtype {spec.dtype}); reshape the data to match. "
            f"Received: shape={tuple(array.shape)}"
        )
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise InputError(f"{where}, row {index[0]} holds NaN or inf at {index}. Fill or drop it. "
                         f"Received: {array[index]!r}")
    return array


def _cast(spec: TensorSpec, array: np.ndarray, where: str) -> np.ndarray:
    kind = array.dtype.kind
    if spec.dtype == "string":
        if kind == "U":
            return array
        if kind == "S":
            return np.char.decode(array, "utf-8")
        if kind == "O" and all(isinstance(v, (str, bytes)) for v in array.flat):
            return as_str_array(array)
        raise InputError(f"{where} takes strings; pass text. Received: dtype={array.dtype}")
    if kind in "USO":
        raise InputError(f"{where} takes {spec.dtype} numbers; convert the data to numbers. "
                         f"Received: dtype={array.dtype}")
    target = np.dtype(spec.dtype)
    if target.kind == "b":
        if kind != "b":
            raise InputError(f"{where} takes booleans. Received: dtype={array.dtype}")
        return array
    if target.kind in "iu":
        if kind == "f":
            if not np.all(np.isfinite(array)) or not np.all(np.equal(np.mod(array, 1), 0)):
                raise InputError(f"{where} takes integers ({spec.dtype}); the data has fractions or NaN. "
                                 f"Received: dtype={array.dtype}")
        elif kind not in "iub":
            raise InputError(f"{where} takes integers ({spec.dtype}). Received: dtype={array.dtype}")
        return array.astype(target, copy=False)
    if kind not in "iufb":
        raise InputError(f"{where} takes {spec.dtype} numbers. Received: dtype={array.dtype}")
    return array.astype(target, copy=False)


def as_str_array(array: np.ndarray) -> np.ndarray:
    """A bytes or object array as a unicode str array (bytes decoded as UTF-8)."""
    if not array.size:
        return array.astype(str)
    return np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v), otypes=[str])(array)


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


# -- deriving a signature from a Keras model (duck-typed) --------------------

def derive_iospec(model: Any, reference_inputs: Any = None, *, input_signature: Any = None,
                     feature_names: Sequence[str] | None = None) -> IOSpec:
    """Read the signature off a Keras model.

    Functional and Sequential models give their own ``keras.Input`` names,
    dtypes and shapes, and their output layer names (or dict keys). A
    subclassed model has none of these: its inputs come from ``input_signature``
    (a list or dict of :class:`TensorSpec`) or from the structure of
    ``reference_inputs`` (a dict's keys, a list's order, or one array), and its
    outputs from what it returns on them.

    Args:
        model: a built Keras model.
        reference_inputs: example inputs (needed for a subclassed model without ``input_signature``).
        input_signature: explicit input specs, for a subclassed model.
        feature_names: column names of a single 2-D input (default: a DataFrame's
            columns, else ``f0, f1, ...``).

    Returns:
        A :class:`Signature` whose outputs still lack dtype facts that only a run
        can tell; :func:`kerasio.export` completes them from the reference outputs.
    """
    kind = _model_kind(model)
    if input_signature is not None:
        inputs, structure = _explicit_inputs(input_signature)
    elif kind != "subclassed":
        inputs, structure = _functional_inputs(model)
    elif reference_inputs is not None:
        inputs, structure = _inputs_from_data(reference_inputs)
    else:
        raise InputError(
            f"model {getattr(model, 'name', '?')!r} is a subclassed keras.Model, which has no keras.Input to read "
            "the input names, dtypes and shapes from. Pass reference_inputs=... or input_signature=[TensorSpec(...)]. "
            "Received: reference_inputs=None, input_signature=None"
        )
    if feature_names is None and _is_frame(reference_inputs) and len(inputs) == 1 and inputs[0].rank == 2 \
            and inputs[0].shape[1] != 1:
        feature_names = [str(c) for c in reference_inputs.columns]
    if len(inputs) == 1 and inputs[0].rank == 2:
        width = inputs[0].shape[1]
        if feature_names is None and width is not None:
            feature_names = [inputs[0].name] if width == 1 else [f"f{i}" for i in range(width)]
        if feature_names is not None and width is not None and len(feature_names) != width:
            raise InputError(
                f"{len(feature_names)} feature names were given but input {inputs[0].describe()} has {width} "
                f"columns; pass one name per column. Received: feature_names={list(feature_names)}"
            )
    else:
        feature_names = None
    outputs, out_structure = _functional_outputs(model, kind) if kind != "subclassed" else ([], "single")
    return IOSpec(
        inputs=inputs, outputs=outputs, input_structure=structure, output_structure=out_structure,
        feature_names=list(feature_names) if feature_names is not None else None, model_kind=kind,
        compute_dtype=_compute_dtype(model), layers=_layer_classes(model), quantization=_quantization(model),
    )


def complete_outputs(iospec: IOSpec, raw_outputs: Any) -> IOSpec:
    """Name the outputs from a real run (a subclassed model's names come from what it returns).

    A dict's keys, a list's order (``output_0, ...``) or one ``output``;
    dtypes and shapes come from the arrays. Functional models keep their names.
    """
    if isinstance(raw_outputs, Mapping):
        structure, named = "dict", {str(k): v for k, v in raw_outputs.items()}
    elif isinstance(raw_outputs, (list, tuple)):
        structure = "list"
        names = iospec.output_names if len(iospec.outputs) == len(raw_outputs) else \
            [f"output_{i}" for i in range(len(raw_outputs))]
        named = dict(zip(names, raw_outputs))
    else:
        structure = "single"
        named = {(iospec.output_names or ["output"])[0]: raw_outputs}
    known = {s.name: s for s in iospec.outputs}
    specs = []
    for name, value in named.items():
        array = np.asarray(value)
        old = known.get(name)
        shape = old.shape if old is not None else (None, *array.shape[1:])
        specs.append(TensorSpec(name=name, dtype=dtype_name(array.dtype), shape=tuple(shape),
                                activation=old.activation if old is not None else None))
    iospec.outputs = specs
    iospec.output_structure = structure
    return iospec


def mark_probabilities(iospec: IOSpec, outputs: Mapping[str, np.ndarray]) -> IOSpec:
    """Flag the outputs whose rows are probability vectors (softmax, or values that sum to 1)."""
    iospec.outputs = [
        TensorSpec(s.name, dtype_name(np.asarray(outputs[s.name]).dtype), s.shape, s.activation,
                   _looks_like_probabilities(np.asarray(outputs[s.name]), s.activation))
        for s in iospec.outputs
    ]
    return iospec


def _looks_like_probabilities(array: np.ndarray, activation: str | None) -> bool:
    if array.dtype.kind != "f" or array.ndim < 2 or array.shape[-1] < 2:
        return False
    if activation == "softmax":
        return True
    if activation not in (None, "linear"):
        return False
    values = array.astype(np.float64)
    return bool(values.size and values.min() >= 0 and values.max() <= 1
                and np.allclose(values.sum(-1), 1.0, atol=1e-3))


def _model_kind(model: Any) -> str:
    cls = [c.__name__ for c in type(model).__mro__]
    if "Sequential" in cls:
        return "sequential"
    if type(model).__name__ == "Functional" or (hasattr(model, "_inputs_struct") and "Functional" in cls):
        return "functional"
    return "subclassed"


def _spec_from_tensor(name: str, tensor: Any) -> TensorSpec:
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    return TensorSpec(name=name, dtype=dtype_name(tensor.dtype), shape=shape)


def _functional_inputs(model: Any) -> tuple[list[TensorSpec], str]:
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, Mapping):
        return [_spec_from_tensor(str(k), t) for k, t in struct.items()], "dict"
    tensors = list(model.inputs)
    specs = [_spec_from_tensor(getattr(t, "name", None) or f"input_{i}", t) for i, t in enumerate(tensors)]
    return specs, "list" if len(tensors) > 1 else "single"  # a list of one input also takes the bare tensor


def _functional_outputs(model: Any, kind: str) -> tuple[list[TensorSpec], str]:
    struct = getattr(model, "_outputs_struct", None)
    if isinstance(struct, Mapping):
        pairs = [(str(k), t) for k, t in struct.items()]
        structure = "dict"
    else:
        tensors = list(model.outputs)
        names = list(getattr(model, "output_names", None) or [])
        if kind == "sequential":
            names = [model.layers[-1].name]  # a Sequential's one output is its last layer's
        if len(names) != len(tensors):
            names = [f"output_{i}" for i in range(len(tensors))]
        pairs = list(zip(names, tensors))
        structure = "list" if len(tensors) > 1 else "single"
    return [replace(_spec_from_tensor(name, t), activation=_activation_of(t)) for name, t in pairs], structure


def _activation_of(tensor: Any) -> str | None:
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None) if history is not None else None
    if layer is None:
        return None
    if type(layer).__name__ == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    return str(name) if name else None


def _explicit_inputs(spec: Any) -> tuple[list[TensorSpec], str]:
    if isinstance(spec, TensorSpec):
        return [spec], "single"
    if isinstance(spec, Mapping):
        return [s if isinstance(s, TensorSpec) else TensorSpec(str(k), dtype_name(s[1]), tuple(s[0]))
                for k, s in spec.items()], "dict"
    specs = list(spec)
    if not specs or not all(isinstance(s, TensorSpec) for s in specs):
        raise InputError(
            "input_signature must be a TensorSpec, a list of TensorSpec, or a dict of them; e.g. "
            "[kerasio.TensorSpec('x', 'float32', (None, 8))]. Received: " + repr(spec)[:200]
        )
    return specs, "single" if len(specs) == 1 else "list"


def _inputs_from_data(data: Any) -> tuple[list[TensorSpec], str]:
    def spec(name: str, value: Any) -> TensorSpec:
        array = np.asarray(value)
        if array.ndim == 0:
            raise InputError(f"reference input {name!r} is a scalar; pass a batch (first axis = rows). "
                             f"Received: {array!r}")
        return TensorSpec(name, dtype_name(array.dtype), (None, *array.shape[1:]))

    if _is_frame(data):
        return [spec("input", data.to_numpy())], "single"
    if isinstance(data, Mapping):
        return [spec(str(k), v) for k, v in data.items()], "dict"
    if isinstance(data, (list, tuple)) and data and all(hasattr(v, "shape") for v in data):
        return [spec(f"input_{i}", v) for i, v in enumerate(data)], "list"
    return [spec("input", data)], "single"


def _compute_dtype(model: Any) -> str:
    seen = set()
    for layer in _all_layers(model) + [model]:
        policy = getattr(layer, "dtype_policy", None)
        compute = getattr(policy, "compute_dtype", None)
        if compute:
            seen.add(str(compute))
    for low in ("float16", "bfloat16"):
        if low in seen:
            return low
    return "float32"


def _quantization(model: Any) -> str:
    modes = {str(mode) for layer in _all_layers(model) if (mode := getattr(layer, "quantization_mode", None))}
    return ",".join(sorted(modes))


def _all_layers(model: Any) -> list[Any]:
    flatten = getattr(model, "_flatten_layers", None)
    if callable(flatten):
        try:
            return list(flatten(include_self=False, recursive=True))
        except TypeError:
            pass
    return list(getattr(model, "layers", []))


def _layer_classes(model: Any) -> list[str]:
    return sorted({type(layer).__name__ for layer in _all_layers(model)})
