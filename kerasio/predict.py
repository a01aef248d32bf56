"""Stage 6: labels or outputs for new inputs, fast.

``predict`` never goes through ``model.predict`` (about 50 ms of batching
machinery per call): a loaded artifact runs through a compiled inference
function, well under a millisecond for one row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from kerasio.backends.base import keras_forward, outputs_from_run
from kerasio.backends.environment import keras_backend
from kerasio.bundle.inputs import CHUNK_ROWS, PredictionWriter, iter_input_file, prediction_columns, read_input_file
from kerasio.errors import InputError
from kerasio.formats import Runner
from kerasio.loading import LoadedModel, load
from kerasio.spec.iospec import derive_iospec
from kerasio.spec.task import resolve_task

__all__ = ["predict", "predict_file", "predict_to_file", "predict_chunks", "with_progress", "Predictions", "CHUNK_ROWS"]

_CACHE = "_kerasio_loaded"


def predict(model_or_bundle: Any, inputs: Any, *, probabilities: bool = False, trust: bool = False,
            public_key: str | Path | None = None, limits: Any = None) -> Any:
    """Predict for ``inputs`` with any model kerasio can load, or an in-memory Keras model.

    Args:
        model_or_bundle: a :class:`~kerasio.LoadedModel`, a bundle or artifact
            path (loaded and hash-checked), or a Keras model.
        inputs: an array, a list (one array per input), a dict keyed by input
            name, a DataFrame (columns matched by name; extra columns such as
            the label are ignored), or a CSV/Parquet/.npz/.npy path.
        probabilities: for a classification, also return the probabilities.
        trust: you vouch for the artifact (see :func:`kerasio.load`): it loads in this process, pickle included.
        public_key: require the bundle's signature by this key (see :func:`kerasio.load`).
        limits: for an artifact that is not yours, the worker's limits (see :class:`kerasio.Limits`).

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
    if isinstance(model_or_bundle, (str, Path)):  # loaded for this call only (an untrusted one's worker stops after)
        with load(model_or_bundle, trust=trust, public_key=public_key, limits=limits) as loaded:
            return loaded.predict(inputs, probabilities=probabilities)
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
    first: int = 0  # the first data row (0-based) of these predictions in the file
    total: int | None = None  # rows in the whole file, when the reader knows it

    @classmethod
    def concatenate(cls, parts: list["Predictions"]) -> "Predictions":
        """The chunks of one file as one set of predictions (an empty file: no rows)."""
        if len(parts) <= 1:
            return parts[0] if parts else cls({}, None, {}, 0)

        def join(dicts: list[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray] | None:
            if any(d is None for d in dicts):
                return None
            return {k: np.concatenate([d[k] for d in dicts if d is not None]) for k in dicts[0] or {}}

        labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts if p.labels is not None])
        return cls(join([p.outputs for p in parts]) or {}, labels, join([p.columns for p in parts]),
                   sum(p.rows for p in parts), sum(p.seconds for p in parts), 0, parts[0].total)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def arrays(self) -> dict[str, np.ndarray]:
        """What an ``.npz`` of these predictions holds: the labels (if any) and every output."""
        return self.outputs if self.labels is None else {"label": self.labels, **self.outputs}


def predict_chunks(model: LoadedModel, path: str | Path, *, header: bool = True, chunk_rows: int = CHUNK_ROWS,
                   batch_size: int | None = None) -> Iterator[Predictions]:
    """Predictions for a CSV, Parquet, ``.npz`` or ``.npy`` file, one chunk at a time (memory holds one chunk).

    CSV columns are matched by name; with ``header=False`` the CSV has no
    header row and its columns are taken in the order of the model's features
    (a single 2-D input only). Each chunk runs in calls of ``batch_size`` rows
    (default: the whole chunk). Errors name the file and the data row.
    """
    import time


    for first, chunk, total in iter_input_file(path, chunk_rows=chunk_rows, header=header):
        source = f"{path} (data rows {first + 1}-{first + _rows(chunk)})"
        raw = _headerless(path, model, chunk, first) if not header and _is_csv(path) else chunk
        inputs = model.iospec.coerce(raw, source=source)
        start = time.perf_counter()
        outputs = _run_batches(model, inputs, batch_size)
        found = _present(model, outputs)
        found.seconds, found.first, found.total = time.perf_counter() - start, first, total
        yield found


def predict_file(model: LoadedModel, path: str | Path, *, header: bool = True,
                 progress: Callable[[int, int | None, float], None] | None = None, chunk_rows: int = CHUNK_ROWS,
                 batch_size: int | None = None) -> Predictions:
    """Every prediction for a file of inputs, in memory (for a file of any size, :func:`predict_to_file`).

    A classification's table is ``label`` and one ``p_<class>`` column per class;
    other models' outputs are columns named after them. The file is read in
    chunks of ``chunk_rows``; ``progress(rows done, rows in all or None, seconds)``
    is called after each.
    """
    chunks = predict_chunks(model, path, header=header, chunk_rows=chunk_rows, batch_size=batch_size)
    return Predictions.concatenate(list(with_progress(chunks, progress)))


def predict_to_file(model: LoadedModel, path: str | Path, output: str | Path, *, header: bool = True,
                    progress: Callable[[int, int | None, float], None] | None = None, chunk_rows: int = CHUNK_ROWS,
                    batch_size: int | None = None) -> tuple[int, float]:
    """Stream predictions for a file of any size into ``output`` (``.csv`` or ``.npz``), written atomically.

    Memory holds one chunk of inputs and outputs, never the file. The output
    appears under its name only when complete (see
    :class:`~kerasio.bundle.inputs.PredictionWriter`).

    Returns:
        ``(rows, seconds)``: rows predicted, and wall time from the first read to the rename.
    """
    import time


    start = time.perf_counter()
    chunks = predict_chunks(model, path, header=header, chunk_rows=chunk_rows, batch_size=batch_size)
    with PredictionWriter(output) as writer:
        for part in with_progress(chunks, progress):
            writer.write(part.arrays(), part.columns)
    return writer.rows, time.perf_counter() - start


def with_progress(parts: Iterator[Predictions], progress: Callable[[int, int | None, float], None] | None
                  ) -> Iterator[Predictions]:
    """``parts`` as they come, calling ``progress(rows done, rows in all, seconds)`` after each."""
    import time

    start, done = time.perf_counter(), 0
    for part in parts:
        done += part.rows
        if progress is not None:
            progress(done, part.total, time.perf_counter() - start)
        yield part


def _rows(chunk: Any) -> int:
    return len(next(iter(chunk.values()))) if isinstance(chunk, dict) else len(chunk)


def _is_csv(path: str | Path) -> bool:
    return Path(path).suffix.lower() not in (".parquet", ".pq", ".npz", ".npy")


def _run_batches(model: LoadedModel, inputs: dict[str, np.ndarray], batch_size: int | None) -> dict[str, np.ndarray]:
    rows = len(next(iter(inputs.values())))
    if not batch_size or rows <= batch_size:
        return dict(model.runner.run(inputs))
    parts = [model.runner.run({k: v[i:i + batch_size] for k, v in inputs.items()}) for i in range(0, rows, batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _present(model: LoadedModel, outputs: dict[str, np.ndarray]) -> Predictions:
    """A chunk's outputs as a classifier's labels and the table they make."""

    task = model.task
    labels = None
    if task.is_classification:  # a fixed width (the longest class name): every chunk's labels stack alike
        width = max((len(str(c)) for c in task.class_names or []), default=1)
        labels = np.asarray(task.labels(outputs)).astype(f"<U{width}")
    shown = {str(task.output): outputs[str(task.output)]} if task.is_classification else outputs
    columns = prediction_columns(shown, labels=labels, class_names=task.class_names, binary=task.binary)
    return Predictions(outputs, labels, columns, len(next(iter(outputs.values()))))


def _headerless(path: str | Path, model: LoadedModel, frame: Any, first: int) -> np.ndarray:
    """A chunk of a header-less CSV as one array, its columns in the order of the model's features."""
    import pandas as pd

    iospec = model.iospec
    if len(iospec.inputs) != 1 or iospec.inputs[0].rank != 2:
        raise InputError(f"{path}: --no-header reads columns by position, which needs a model with one 2-D input; "
                         f"this one takes {iospec.describe()}. Add a header row with the input names. "
                         f"Received: --no-header")
    width = iospec.inputs[0].shape[1]
    if width is not None and frame.shape[1] != width:
        names = iospec.feature_names or []
        raise InputError(f"{path}: {frame.shape[1]} columns, but the model takes {width} features"
                         f"{' (' + ', '.join(names) + ')' if names else ''}, in that order. Received: "
                         f"{frame.shape[1]} columns, --no-header")
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & frame.notna()
    if bad.to_numpy().any():
        row, col = map(int, np.argwhere(bad.to_numpy())[0])
        raise InputError(f"{path}: row {first + row + 1}, column {col + 1} holds {frame.iat[row, col]!r}, not a "
                         f"number. Fix that cell. Received: --no-header")
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

    if isinstance(inputs, (str, Path)):
        inputs = read_input_file(inputs)
    iospec = derive_iospec(model, inputs)
    if iospec.model_kind == "subclassed":  # outputs are known only from a run
        outputs_from_run(model, iospec, iospec.coerce(inputs))
    backend = keras_backend()
    runner = Runner(keras_forward(model, iospec), format="memory", path=Path("<memory>"),
                    runtime=f"keras/{backend}", backend=backend, iospec=iospec, model=model)
    loaded = LoadedModel(runner, resolve_task("auto", iospec))
    if hasattr(model, "__dict__"):
        vars(model)[_CACHE] = loaded
    return loaded
