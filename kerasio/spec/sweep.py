"""The shape sweep: every dynamic axis of the signature, verified at sizes other than the reference's.

Two fixed shapes (the reference batch and its first row) miss the exports that
bake a dimension in: an ONNX graph whose batch is fixed to the reference size,
an RNN that is right only at the traced sequence length. So every ``None`` axis
is checked at other sizes too, each made from the reference inputs:

* the batch axis at 2 and 7 rows (with the reference size and the 1-row batch
  that every bundle already checks): the first rows, tiled when there are fewer;
* each other dynamic axis (a sequence length, an image side) at about half and
  one and a half times its reference length, on the first 2 rows: cut, or
  repeated and cut. Inputs whose same axis has the same reference length (BERT's
  ``token_ids``, ``segment_ids`` and ``padding_mask``) change together.

The original model's outputs at these shapes are computed at export and stored
as extra reference arrays; a size the model itself refuses is left out, with the
reason. Plain numpy over the signature: no framework here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from kerasio.spec.iospec import IOSpec

__all__ = ["SweepShape", "sweep_shapes", "BATCH_SIZES", "AXIS_ROWS"]

BATCH_SIZES = (2, 7)  # with 1 and the reference size: two small sizes, one of them odd and past a SIMD width
AXIS_ROWS = 2  # rows used for the other axes' sizes


@dataclass
class SweepShape:
    """One input shape of the sweep: a name for reports (``batch 7``, ``axis 1 = 12 (token_ids, ...)``), inputs."""

    name: str
    inputs: dict[str, np.ndarray]

    def shapes(self) -> dict[str, list[int]]:
        return {k: [int(d) for d in v.shape] for k, v in self.inputs.items()}


def _resize(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``array`` cut to ``size`` along ``axis``, or repeated along it then cut."""
    length = array.shape[axis]
    if size > length:
        array = np.concatenate([array] * -(-size // length), axis=axis)
    return np.take(array, np.arange(size), axis=axis)


def _groups(iospec: IOSpec, x: Mapping[str, np.ndarray]) -> dict[tuple[int, int], list[str]]:
    """Inputs by (dynamic axis after the batch, its reference length): the axes that change together."""
    groups: dict[tuple[int, int], list[str]] = {}
    for spec in iospec.inputs:
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if dim is None and x[spec.name].ndim > axis and x[spec.name].shape[axis] > 0:
                groups.setdefault((axis, int(x[spec.name].shape[axis])), []).append(spec.name)
    return groups


def candidate_shapes(iospec: IOSpec, x: Mapping[str, np.ndarray]) -> list[tuple[SweepShape, SweepShape | None]]:
    """Each shape of the sweep, with a fallback to try when the model refuses it (or None)."""
    rows = len(next(iter(x.values())))
    found: list[tuple[SweepShape, SweepShape | None]] = []
    if iospec.inputs and all(s.shape and s.shape[0] is None for s in iospec.inputs):
        for size in BATCH_SIZES:
            if size != rows:
                found.append((SweepShape(f"batch {size}", {k: _resize(v, 0, size) for k, v in x.items()}), None))
    few = {k: v[:AXIS_ROWS] for k, v in x.items()}
    for (axis, length), names in _groups(iospec, x).items():
        who = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")

        def at(size: int) -> SweepShape:
            return SweepShape(f"axis {axis} = {size} ({who})",
                              {k: _resize(v, axis, size) if k in names else v for k, v in few.items()})

        half, longer = max(1, length // 2), length + max(1, length // 2)
        shorter = length - 1 if length - 1 >= 1 and length - 1 != half else None
        if half != length:
            found.append((at(half), None))
        found.append((at(longer), at(shorter) if shorter else None))  # a model with a maximum length refuses more
    return found


def sweep_shapes(iospec: IOSpec, x: Mapping[str, np.ndarray], forward: Callable[[dict[str, np.ndarray]], Any]
                 ) -> tuple[list[tuple[SweepShape, dict[str, np.ndarray]]], dict[str, str]]:
    """The sweep's shapes the model accepts, each with the original model's outputs, and those it refused.

    ``forward`` runs the original model (export's compiled reference pass); a shape it raises on is
    replaced by its fallback, or left out, with the model's own first error line.
    """
    accepted: list[tuple[SweepShape, dict[str, np.ndarray]]] = []
    refused: dict[str, str] = {}
    for shape, fallback in candidate_shapes(iospec, x):
        for attempt in (shape, fallback):
            if attempt is None:
                break
            try:
                accepted.append((attempt, forward(attempt.inputs)))
                break
            except Exception as exc:  # the model itself does not take this size: nothing to verify there
                text = str(exc).strip().splitlines()
                refused[attempt.name] = f"the model itself refuses it ({type(exc).__name__}: " \
                                        f"{text[0][:200] if text else ''})"
    return accepted, refused
