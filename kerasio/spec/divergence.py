"""Where an artifact starts to disagree with the original model: layer by layer, the first diverging layer.

A failing check says "max abs 0.2" at the outputs; this says where. The
original model's top-level layers are run with their outputs recorded (in the
order they run), the same tensors are read from the artifact, and each layer
is compared under the check's tolerance. The first layer whose output leaves
the tolerance is named, with its statistics, and the last layer that still
agrees. Plain numpy over named arrays: the frameworks that produce them are in
:mod:`kerasio.formats` and :mod:`kerasio.process.explain`.

The tensors of a converted graph are found by the op name the layer's output
has in the original model's own TensorFlow trace (``functional_1/dense_1_2/Relu``:
TensorFlow renames scopes to keep them unique, so a layer's name alone is
ambiguous); an ONNX node, a frozen SavedModel node and a LiteRT tensor keep
that name, the last possibly fused with others (``a/MatMul;a/Relu;a/BiasAdd``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kerasio.spec.tolerances import compare_output

__all__ = ["METHODS", "LayerOutput", "LayerVerdict", "Divergence", "locate_tensors", "read_layers", "compare_layers"]

METHODS = ("auto", "intermediates", "bisect")  # how verify --explain reads an artifact's layers


@dataclass
class LayerOutput:
    """One top-level layer's output in the original model: ``key`` is the layer's name (``name[1]`` for its second
    output), ``op`` the name of the op producing it in the original's TensorFlow trace (converted graphs only)."""

    key: str
    layer_class: str
    value: np.ndarray
    op: str = ""


@dataclass
class LayerVerdict:
    """How one layer's output in the artifact compares with the original's (``status``: agree, diverge, unread)."""

    layer: str
    layer_class: str
    shape: list[int]
    status: str
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mismatches: int = 0
    elements: int = 0
    tensor: str = ""  # where the artifact's value was read (a graph tensor's name), or why it was not
    detail: str = ""

    def text(self) -> str:
        stats = f"max abs {_sci(self.max_abs_diff)}, mean abs {_sci(self.mean_abs_diff)}, " \
                f"{self.mismatches} of {self.elements} values outside"
        return f"{self.layer!r} ({self.layer_class}, output {self.shape}): {stats}" + \
            (f"; {self.detail}" if self.detail else "")


@dataclass
class Divergence:
    """The layer-by-layer comparison of one artifact with the original, on one failing input.

    ``method``: ``intermediates`` (the artifact's own tensors were read) or ``bisect`` (prefix sub-models of the
    original were exported in the artifact's format and compared, smallest failing prefix first).
    """

    format: str
    method: str
    inputs: str  # which input the layers were compared on (``reference batch``, ``batch 7``, ...)
    atol: float
    rtol: float
    layers: list[LayerVerdict] = field(default_factory=list)
    note: str = ""

    @property
    def first_diverging(self) -> LayerVerdict | None:
        return next((v for v in self.layers if v.status == "diverge"), None)

    @property
    def last_agreeing(self) -> LayerVerdict | None:
        first = self.first_diverging
        before = self.layers[:self.layers.index(first)] if first is not None else self.layers
        return next((v for v in reversed(before) if v.status == "agree"), None)

    def summary(self) -> str:
        """One line: the first diverging layer and the last agreeing one, or that every layer read agrees."""
        first, last = self.first_diverging, self.last_agreeing
        read = sum(v.status != "unread" for v in self.layers)
        how = f"{read} of {len(self.layers)} layers read ({self.method}) on the {self.inputs}"
        if first is None:
            return f"every layer read agrees within atol {self.atol:g}, rtol {self.rtol:g}: {how}" + \
                (f"; {self.note}" if self.note else "")
        after = f"; last agreeing layer: {last.layer!r} ({last.layer_class})" if last else \
            "; no earlier layer agrees"
        return f"first diverging layer: {first.text()}{after}; {how}"

    def to_dict(self) -> dict[str, Any]:
        first, last = self.first_diverging, self.last_agreeing
        return {**asdict(self), "first_diverging": first.layer if first else None,
                "last_agreeing": last.layer if last else None, "summary": self.summary()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Divergence":
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "layers"}
        return cls(**fields, layers=[LayerVerdict(**v) for v in data.get("layers", [])])


def locate_tensors(ops: Mapping[str, str], names: Sequence[str]) -> dict[str, list[str]]:
    """For each layer key of ``ops`` (``{key: op}`` in the order the layers ran), the graph tensors among ``names``
    that may hold its output, in graph order.

    A name matches a layer when one of its ``;``-separated parts (LiteRT fuses ops into one tensor and joins their
    names) is the layer's op or ends with ``/`` + it (the SavedModel nests the graph under ``StatefulPartitionedCall``),
    with an optional ``:0``. A fused tensor holds the value of the last op fused, so it counts only for the
    latest layer it names: the earlier ones are left unread rather than compared with a later layer's value.
    """
    keys = list(ops)
    order = {op: i for i, op in enumerate(ops.values()) if op}
    found: dict[str, list[str]] = {}
    for name in names:
        hits = [order[op] for part in name.split(";") for op in [_op_of(part, order)] if op is not None]
        if hits:
            found.setdefault(keys[max(hits)], []).append(name)
    return found


def read_layers(layers: Sequence[LayerOutput], names: Sequence[str],
                fetch: Callable[[list[str]], Mapping[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The artifact's value of each layer's output: ``({key: value}, {key: tensor name})``.

    ``names`` are the graph's tensors, ``fetch`` reads some of them on the failing input. Of a layer's candidates
    (:func:`locate_tensors`), the first with the layer's shape is taken (or its number of elements, for a runtime
    that keeps another layout): a weight folded into a layer's op carries its name too, not its output's shape.
    """
    candidates = locate_tensors({layer.key: layer.op for layer in layers}, names)
    fetched = fetch(list(dict.fromkeys(n for found in candidates.values() for n in found)))
    values, where = {}, {}
    for layer in layers:
        shape = np.shape(layer.value)
        fits = [n for n in candidates.get(layer.key, []) if n in fetched and np.shape(fetched[n]) == shape] or \
               [n for n in candidates.get(layer.key, []) if n in fetched and np.size(fetched[n]) == np.size(layer.value)]
        if fits:
            values[layer.key], where[layer.key] = fetched[fits[0]], fits[0]
    return values, where


def _op_of(part: str, ops: Mapping[str, int]) -> str | None:
    """The layer op that one part of a tensor's name is, if any (``.../functional_1/dense_1/Relu:0`` -> its op)."""
    base = part.rsplit(":", 1)[0] if part.rsplit(":", 1)[-1].isdigit() else part
    if base in ops:
        return base
    segments = base.split("/")
    for start in range(1, len(segments)):  # the shortest suffix that is an op, after a nesting prefix
        tail = "/".join(segments[start:])
        if tail in ops:
            return tail
    return None


def compare_layers(layers: Sequence[LayerOutput], values: Mapping[str, np.ndarray | None], *, fmt: str, method: str,
                   inputs: str, atol: float, rtol: float, where: Mapping[str, str] | None = None,
                   unread: Mapping[str, str] | None = None) -> Divergence:
    """Each layer's recorded output against the artifact's value for it (``values[key]``; missing: unread).

    ``where`` names the tensor each value was read from; ``unread`` says why a layer could not be read.
    """
    result = Divergence(format=fmt, method=method, inputs=inputs, atol=atol, rtol=rtol)
    for layer in layers:
        reference = np.asarray(layer.value)
        actual = values.get(layer.key)
        shape = [int(d) for d in reference.shape]
        if actual is None:
            why = (unread or {}).get(layer.key) or "the artifact keeps no tensor for this layer's output " \
                                                     "(fused into another op, or folded away)"
            result.layers.append(LayerVerdict(layer.key, layer.layer_class, shape, "unread", tensor="", detail=why))
            continue
        actual = np.asarray(actual)
        if actual.shape != reference.shape and actual.size == reference.size:
            actual = actual.reshape(reference.shape)  # a runtime that keeps a squeezed or flattened layout
        out = compare_output(layer.key, reference, actual, atol=atol, rtol=rtol)
        result.layers.append(LayerVerdict(
            layer.key, layer.layer_class, shape, "agree" if out.passed else "diverge", max_abs_diff=out.max_abs_diff,
            mean_abs_diff=out.mean_abs_diff, max_rel_diff=out.max_rel_diff, mismatches=out.mismatches,
            elements=out.elements, tensor=(where or {}).get(layer.key, ""), detail=out.detail))
    return result


def _sci(v: float | None) -> str:
    return "-" if v is None else ("0" if v == 0 else f"{v:.2e}")
