"""Stage 6: labels or outputs for new inputs, fast.

``predict`` never goes through ``model.predict`` (about 50 ms of batching
machinery per call): a loaded artifact runs through a compiled inference
function, well under a millisecond for one row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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

    def arrays(self) -> dict[str, np.ndarray]:
        """What an ``.npz`` of these predictions holds: the labels (if any) and every output."""
        return self.outputs if self.labels is None else {"label": self.labels, **self.outputs}


def predict_file(model: LoadedModel, path: str | Path) -> Predictions:
    """Predict for a CSV, Parquet, ``.npz`` or ``.npy`` file of inputs (what ``kerasio predict`` runs).

    A classification's table is ``label`` and one ``p_<class>`` column per class;
    other models' outputs are columns named after them.
    """
    from .tables import prediction_columns

    outputs = model.run(path)  # reads the file; errors name it
    task = model.task
    labels = task.labels(outputs) if task.is_classification else None
    shown = {str(task.output): outputs[str(task.output)]} if task.is_classification else outputs
    columns = prediction_columns(shown, labels=labels, class_names=task.class_names, binary=task.binary)
    return Predictions(outputs, labels, columns, len(next(iter(outputs.values()))))


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
