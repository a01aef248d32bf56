"""Stage 6: labels (and probabilities) for new rows, fast.

``predict`` never goes through ``model.predict`` (about 50 ms of batching
machinery per call): a loaded artifact runs through a compiled inference
function, well under a millisecond for one row.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import read_feature_rows

__all__ = ["predict", "predictions_frame"]


def predict(model_or_bundle, rows, *, probabilities: bool = False, trust: bool = False):
    """Predict class names for ``rows``.

    Args:
        model_or_bundle: a :class:`~kerasio.LoadedModel`, a bundle or artifact
            path (loaded and hash-checked), or an in-memory Keras model.
        rows: a float array ``[n, n_features]`` (or one row), a DataFrame or a
            CSV path. DataFrame and CSV columns are selected by feature name,
            so extra columns such as the label are ignored.
        probabilities: also return the ``[n, n_classes]`` probabilities.
        trust: allow loading a pickle artifact.

    Returns:
        An array of class names, or ``(labels, probabilities)``.

    Raises:
        InputError: wrong feature count, a missing column, or non-numeric data.

    Example:
        >>> model = kerasio.load("saved_models/seed")  # doctest: +SKIP
        >>> kerasio.predict(model, "new_flowers.csv")  # doctest: +SKIP
        array(['setosa', 'virginica'], dtype='<U10')
    """
    from .loading import LoadedModel, load

    if isinstance(model_or_bundle, (str, Path)):
        model_or_bundle = load(model_or_bundle, trust=trust)
    if not isinstance(model_or_bundle, LoadedModel):
        model_or_bundle = _wrap_keras(model_or_bundle)
    loaded = model_or_bundle
    x = read_feature_rows(rows, loaded.feature_names, source=str(rows) if isinstance(rows, (str, Path)) else "rows")
    probs = loaded.runner.predict_proba(x)
    labels = loaded.label_array[np.argmax(probs, axis=-1)]
    return (labels, probs) if probabilities else labels


def _wrap_keras(model):
    """Wrap an in-memory Keras model once (cached on the model)."""
    cached = getattr(model, "_kerasio_loaded", None)
    if cached is not None:
        return cached
    from .formats import Runner
    from .loading import LoadedModel
    from .runtime import compile_keras

    n_in, n_out = int(model.input_shape[-1]), int(model.output_shape[-1])
    runner = Runner(predict_proba=compile_keras(model), format="memory", path=Path("<memory>"), runtime="keras",
                    n_features=n_in, n_classes=n_out, model=model)
    loaded = LoadedModel(runner, [f"f{i}" for i in range(n_in)], [str(i) for i in range(n_out)])
    model._kerasio_loaded = loaded
    return loaded


def predictions_frame(labels: np.ndarray, probs: np.ndarray, class_names):
    """The CLI's output table: a ``label`` column and one probability column per class."""
    import pandas as pd

    frame = pd.DataFrame({"label": labels})
    for i, name in enumerate(class_names):
        frame[f"p_{name}"] = probs[:, i]
    return frame
