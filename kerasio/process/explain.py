"""The worker job behind ``verify --explain``: find the first layer where an artifact leaves the original.

It runs in the worker that checked the artifact (sandboxed for a bundle that is
not the caller's), on the input the check failed on:

1. the bundle's ``.keras`` file, audited and loaded as every ``.keras`` is, is
   the original: each top-level layer's output is recorded as it runs
   (a functional model's layers, or a subclassed model's top-level layers);
2. the artifact's own values of those tensors are read through its format
   (:meth:`~kerasio.formats.Format.intermediates`: a Keras artifact's layers, an
   ONNX graph with the tensors made outputs, a frozen SavedModel pruned to them,
   a LiteRT interpreter that keeps every tensor);
3. where a format cannot expose them, or on ``method="bisect"``, prefix
   sub-models of the original (its inputs up to one layer's output) are
   exported in that format and compared, halving the range each time, until
   the smallest failing prefix is found. This finds where a *converter* goes
   wrong; only reading the artifact's tensors finds a tampered file.

The layers are compared under the check's tolerance
(:func:`~kerasio.spec.divergence.compare_layers`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kerasio.backends.environment import keras_backend
from kerasio.bundle.arrays import load_arrays
from kerasio.bundle.audit import allowing_ops
from kerasio.formats import ExportContext, Format, get_format
from kerasio.formats._keras_common import layer_outputs
from kerasio.formats._tf_common import layer_ops
from kerasio.process.jobs import job
from kerasio.spec.divergence import Divergence, LayerOutput, compare_layers
from kerasio.spec.iospec import IOSpec, derive_iospec
from kerasio.spec.task import resolve_task
from kerasio.spec.tolerances import compare_output

__all__ = ["explain", "bisect"]


@job("explain")
def explain(original: str, artifact: str, format: str, iospec: dict[str, Any], inputs: str, case: str,
            atol: float, rtol: float, method: str = "auto", device: str = "cpu", trust: bool = False,
            allow_ops: Sequence[str] = ()) -> dict[str, Any]:
    """Compare ``artifact`` with the ``original`` ``.keras`` layer by layer on ``inputs`` (an ``.npz``).

    Returns :meth:`Divergence.to_dict`: every top-level layer agreeing, diverging or unread, with statistics.
    """
    spec = IOSpec.from_dict(iospec)
    x = load_arrays(Path(inputs), spec.input_names)
    model = get_format("keras").load(Path(original), iospec=spec, device=device, trust=trust).model
    layers = layer_outputs(model, spec, x)
    fmt = get_format(format)
    graph = fmt.runtime != "keras"
    if graph and keras_backend() == "tensorflow":
        ops = layer_ops(model, spec)
        layers = [LayerOutput(la.key, la.layer_class, la.value, ops.get(la.key, "")) for la in layers]
    read = None
    if method != "bisect":
        with allowing_ops(allow_ops):
            runner = fmt.load(Path(artifact), iospec=spec, device=device, trust=trust)
        read = fmt.intermediates(runner, x, layers)
    if read is not None:
        values, where = read
        outputs = [la.key for la in layers if la.key in spec.output_names and la.key not in values]
        if outputs:  # an output layer's tensor may be kept under the signature's name only (LiteRT)
            ran = runner.run(x)
            values.update({k: ran[k] for k in outputs})
            where.update({k: f"the artifact's output {k!r}" for k in outputs})
        return compare_layers(layers, values, fmt=format, method="intermediates", inputs=case, atol=atol,
                              rtol=rtol, where=where).to_dict()
    if method == "intermediates":
        raise ValueError(f"the {format} runtime cannot expose its intermediate tensors; use method='bisect'")
    return bisect(model, layers, fmt, x, case=case, atol=atol, rtol=rtol).to_dict()


def bisect(model: Any, layers: list[LayerOutput], fmt: Format, x: dict[str, np.ndarray], *, case: str,
           atol: float, rtol: float) -> Divergence:
    """The smallest prefix of a functional model that, exported in ``fmt``, leaves the tolerance.

    Each prefix is the original's inputs up to one layer's output, saved, reloaded and run by the format as an
    export would. The search assumes that once a prefix diverges every longer one does (an error propagates),
    and exports about log2(layers) prefixes.
    """
    import keras

    symbolic = {}
    for layer in getattr(model, "layers", []):
        try:
            flat = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):  # a subclassed model's layers, or a shared layer: no single output
            continue
        for i, tensor in enumerate(flat):
            symbolic[layer.name if len(flat) == 1 else f"{layer.name}[{i}]"] = tensor
    candidates = [i for i, la in enumerate(layers) if la.key in symbolic]
    verdicts: dict[int, tuple[bool, np.ndarray | None, str]] = {}

    def diverges(index: int) -> bool:
        if index not in verdicts:
            verdicts[index] = _prefix_check(model, symbolic[layers[index].key], layers[index], fmt, x, atol, rtol)
        return not verdicts[index][0]

    note = ""
    if not candidates:
        note = "the model is not functional: no prefix sub-model can be built"
    else:
        lo, hi = 0, len(candidates) - 1
        if not diverges(candidates[hi]):
            note = "the whole model exported again in this format agrees: the difference is in the artifact itself"
        else:
            while lo < hi:
                mid = (lo + hi) // 2
                if diverges(candidates[mid]):
                    hi = mid
                else:
                    lo = mid + 1
    values = {layers[i].key: v for i, (_, v, _) in verdicts.items() if v is not None}
    unread = {la.key: "not among the prefixes the bisection exported" for la in layers}
    unread.update({layers[i].key: f"its prefix did not export: {why}" for i, (_, v, why) in verdicts.items()
                   if v is None})
    result = compare_layers(layers, values, fmt=fmt.name, method="bisect", inputs=case, atol=atol, rtol=rtol,
                            where={layers[i].key: "a prefix sub-model exported in this format" for i in verdicts},
                            unread=unread)
    result.note = note
    return result


def _prefix_check(model: Any, tensor: Any, layer: LayerOutput, fmt: Format, x: dict[str, np.ndarray],
                  atol: float, rtol: float) -> tuple[bool, np.ndarray | None, str]:
    """Export the prefix ending at ``tensor`` in ``fmt``, run it on ``x``: (agrees, its value, why it failed)."""
    import keras

    sub = keras.Model(model.inputs, tensor, name=f"prefix_{layer.key}".replace("[", "_").replace("]", ""))
    spec = derive_iospec(sub)
    ctx = ExportContext(iospec=spec, task=resolve_task("raw", spec), reference_inputs=x)
    with tempfile.TemporaryDirectory(prefix="kerasio-bisect-") as tmp:
        dest = Path(tmp) / (Path(fmt.filename).name or fmt.name)
        try:
            fmt.save(sub, dest, ctx)
            value = fmt.load(dest, iospec=spec).run(x)[spec.output_names[0]]
        except Exception as exc:  # a converter that cannot take this prefix: the layer stays unread
            return True, None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    out = compare_output(layer.key, np.asarray(layer.value), np.asarray(value), atol=atol, rtol=rtol)
    return out.passed, np.asarray(value), ""
