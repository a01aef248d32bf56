"""The task adapter: what a model's outputs mean to a user.

``classification``: one output of class probabilities (softmax) or one
sigmoid unit; it gets class names, a ``class_id`` output in the SavedModel,
the ``predict_labels`` signature and a ``label`` column in ``predict``.
``regression``: one numeric output; predictions are its values.
``raw``: anything else (several heads, tensors); outputs as they are.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from kerasio.errors import InputError
from kerasio.spec.iospec import IOSpec

__all__ = ["Task", "resolve_task", "TASKS", "NamedColumns"]

TASKS = ("auto", "classification", "regression", "raw")


@dataclass
class Task:
    """The resolved task. ``output`` names the output it reads (single-output tasks)."""

    kind: str = "raw"
    output: str | None = None
    class_names: list[str] = field(default_factory=list)
    binary: bool = False  # one sigmoid unit: class 1 when p >= 0.5

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    def labels(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Class names for each row of the classification output."""
        probs = np.asarray(outputs[str(self.output)])
        ids = (probs.reshape(len(probs), -1)[:, 0] >= 0.5).astype(np.int64) if self.binary else probs.argmax(-1)
        return np.asarray(self.class_names)[ids]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Task":
        data = dict(data or {})
        return cls(kind=str(data.get("kind", "raw")), output=data.get("output"),
                   class_names=[str(c) for c in data.get("class_names", [])], binary=bool(data.get("binary")))


class _Described(Protocol):
    @property
    def iospec(self) -> IOSpec: ...

    @property
    def task(self) -> Task: ...


class NamedColumns:
    """``feature_names`` and ``class_names`` for anything with a ``signature`` and a ``task`` (manifest, loaded model)."""

    @property
    def feature_names(self: _Described) -> list[str]:
        return list(self.iospec.feature_names or [])

    @property
    def class_names(self: _Described) -> list[str]:
        return list(self.task.class_names)


def resolve_task(task: str, iospec: IOSpec, class_names: Sequence[str] | None = None) -> Task:
    """Decide the task from the signature (``auto``) or check the one asked for.

    ``auto`` makes a classification of a single softmax (or probability-row)
    output, or of a single sigmoid unit; a regression of any other single
    numeric output of at most 2 dimensions (values per row); and ``raw`` of
    everything else (several outputs, tensors per row).

    Raises:
        InputError: the task asked for does not fit the outputs, or class names
            are given for a model that is not a classifier.
    """
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}; pass one of those. Received: task={task!r}")
    outs = iospec.outputs
    single = outs[0] if len(outs) == 1 else None
    numeric = single is not None and single.dtype not in ("string", "bool")
    tabular = single is not None and single.rank <= 2  # values per row, not a tensor per row
    width = single.shape[-1] if single is not None and single.rank >= 2 else None
    binary = bool(single is not None and width == 1 and single.rank == 2 and single.activation == "sigmoid")
    multiclass = bool(single is not None and (single.probabilities or single.activation == "softmax"))
    if task == "auto":
        task = "classification" if (multiclass or binary) else ("regression" if numeric and tabular else "raw")
        if class_names and task != "classification":
            raise InputError(
                f"class_names were given but the model's outputs ({iospec.describe()}) are not class "
                "probabilities (a softmax or a single sigmoid unit). Pass task='classification' if they are. "
                f"Received: class_names={list(class_names)[:10]}"
            )
    if task == "classification":
        if single is None or not numeric or width is None:
            raise InputError(
                "task='classification' needs one output of class probabilities [None, classes] or one sigmoid "
                f"unit [None, 1]; pass task='raw' for this model. Received: outputs {iospec.describe()}"
            )
        binary = width == 1
        n = 2 if binary else int(width)
        names = [str(c) for c in class_names] if class_names else [str(i) for i in range(n)]
        if len(names) != n:
            raise InputError(
                f"{len(names)} class names were given but output {single.describe()} has {n} classes; pass one "
                f"name per class. Received: class_names={names[:10]}"
            )
        return Task("classification", single.name, names, binary)
    if task == "regression":
        if single is None or not numeric:
            raise InputError(
                "task='regression' needs exactly one numeric output; pass task='raw' for several outputs. "
                f"Received: outputs {iospec.describe()}"
            )
        return Task("regression", single.name)
    return Task("raw")
