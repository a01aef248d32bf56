"""Stage 6: labels or outputs for new inputs, fast.

``predict`` never goes through ``model.predict`` (about 50 ms of batching
machinery per call): a loaded artifact runs through a compiled inference
function, well under a millisecond for one row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InputError
from .loading import LoadedModel, load

__all__ = ["predict", "predict_file", "Predictions"]

_CACHE = "_kerasio_loaded"


def predict(model_or_bundle: Any, inputs: Any, *, probabilities: bool = False, trust: bool = False,
            public_key: str | Path | None = None) -> Any:
    """Predict for ``inputs`` with any model kerasio can load, or an in-memory Keras model.

    Args:
        model_or_bundle: a :class:`~kerasio.LoadedModel`, a bundle or artifact
            path (loaded and hash-checked), or a Keras model.
        inputs: an array, a list (one array per input), a dict keyed by input
            name, a DataFrame (columns matched by name; extra columns such as
            the label are ignored), or a CSV/Parquet/.npz/.npy path.
        probabilities: for a classification, also return the probabilities.
        trust: allow loading a pickle artifact.
        public_key: require the bundle's signature by this key (see :func:`kerasio.load`).

    Returns:
        A classification: an array of class names, or ``(labels, probabilities)``.
        Otherwise: the output array, or a dict of arrays for several outputs.

    Raises:
        InputError: inputs that do not match the signature (naming the input or column).

    Example:
        >>> model = kerasio.load("saved_models/seed")  # doctest: +SKIP
        >>> kerasio.predict(model, "new_flowers.csv")  # doctest: +SKIP
        array(['setosa', 'virginica'], dtype='<U10')
    """
    if isinstance(model_or_bundle, (str, Path)):
        model_or_bundle = load(model_or_bundle, trust=trust, public_key=public_key)
    if not isinstance(model_or_bundle, LoadedModel):
        model_or_bundle = _wrap_keras(model_or_bundle, inputs)
    return model_or_bundle.predict(inputs, probabilities=probabilities)


@dataclass
class Predictions:
    """Predictions for a file of inputs: every output, a classifier's labels, and the table they make.

    ``columns`` is ``None`` when some output has more than 2 dimensions (write
    those to ``.npz``).
    """

    outputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    columns: dict[str, np.ndarray] | None
    rows: int
    seconds: float = 0.0  # running the model (reading the file excluded)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def arrays(self) -> dict[str, np.ndarray]:
        """What an ``.npz`` of these predictions holds: the labels (if any) and every output."""
        return self.outputs if self.labels is None else {"label": self.labels, **self.outputs}


CHUNK_ROWS = 65_536


def predict_file(model: LoadedModel, path: str | Path, *, header: bool = True,
                 progress: Callable[[int, int, float], None] | None = None) -> Predictions:
    """Predict for a CSV, Parquet, ``.npz`` or ``.npy`` file of inputs (what ``kerasio predict`` runs).

    A classification's table is ``label`` and one ``p_<class>`` column per class;
    other models' outputs are columns named after them. CSV columns are matched
    by name; with ``header=False`` the CSV has no header row and its columns are
    taken in the order of the model's features (a single 2-D input only). The
    rows run in chunks of :data:`CHUNK_ROWS`; ``progress(rows done, rows in all,
    seconds)`` is called after each.
    """
    import time

    from .tables import prediction_columns, read_input_file

    if header:
        inputs = model.signature.coerce(read_input_file(path), source=str(path))  # errors name the file
    else:
        inputs = model.signature.coerce(_headerless(path, model), source=str(path))
    total = len(next(iter(inputs.values())))
    start, parts = time.perf_counter(), []
    for first in range(0, max(total, 1), CHUNK_ROWS):
        parts.append(model.runner.run({k: v[first:first + CHUNK_ROWS] for k, v in inputs.items()}))
        if progress is not None:
            progress(min(first + CHUNK_ROWS, total), total, time.perf_counter() - start)
    outputs = {k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
    seconds = time.perf_counter() - start
    task = model.task
    labels = task.labels(outputs) if task.is_classification else None
    shown = {str(task.output): outputs[str(task.output)]} if task.is_classification else outputs
    columns = prediction_columns(shown, labels=labels, class_names=task.class_names, binary=task.binary)
    return Predictions(outputs, labels, columns, total, seconds)


def _headerless(path: str | Path, model: LoadedModel) -> np.ndarray:
    """A header-less CSV as one array, its columns in the order of the model's features."""
    import pandas as pd

    signature = model.signature
    if len(signature.inputs) != 1 or signature.inputs[0].rank != 2:
        raise InputError(f"{path}: --no-header reads columns by position, which needs a model with one 2-D input; "
                         f"this one takes {signature.describe()}. Add a header row with the input names. "
                         f"Received: --no-header")
    try:
        frame = pd.read_csv(path, header=None)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable CSV ({str(exc).splitlines()[0][:200]}). Received: --no-header") \
            from None
    width = signature.inputs[0].shape[1]
    if width is not None and frame.shape[1] != width:
        names = signature.feature_names or []
        raise InputError(f"{path}: {frame.shape[1]} columns, but the model takes {width} features"
                         f"{' (' + ', '.join(names) + ')' if names else ''}, in that order. Received: "
                         f"{frame.shape[1]} columns, --no-header")
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & frame.notna()
    if bad.to_numpy().any():
        row, col = map(int, np.argwhere(bad.to_numpy())[0])
        raise InputError(f"{path}: row {row + 1}, column {col + 1} holds {frame.iat[row, col]!r}, not a number. "
                         f"Fix that cell. Received: --no-header")
    return numeric.to_numpy()


def _wrap_keras(model: Any, inputs: Any) -> LoadedModel:
    """Wrap an in-memory Keras model once.

    The wrapper is cached in the model's ``__dict__`` (bypassing Keras's
    attribute tracking, so it is never saved); it references the model, a cycle
    the garbage collector frees with it.
    """
    cached = vars(model).get(_CACHE) if hasattr(model, "__dict__") else None
    if cached is not None:
        return cached
    from .formats import Runner
    from .runtime import keras_backend, keras_forward, outputs_from_run
    from .signature import derive_signature
    from .task import resolve_task

    if isinstance(inputs, (str, Path)):
        from .tables import read_input_file

        inputs = read_input_file(inputs)
    signature = derive_signature(model, inputs)
    if signature.model_kind == "subclassed":  # outputs are known only from a run
        outputs_from_run(model, signature, signature.coerce(inputs))
    backend = keras_backend()
    runner = Runner(keras_forward(model, signature), format="memory", path=Path("<memory>"),
                    runtime=f"keras/{backend}", backend=backend, signature=signature, model=model)
    loaded = LoadedModel(runner, resolve_task("auto", signature))
    if hasattr(model, "__dict__"):
        vars(model)[_CACHE] = loaded
    return loaded
