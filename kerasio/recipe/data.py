"""Stage 1 and 2: load a labelled CSV (or the embedded default) and split it.

Only numpy and pandas are imported here, never TensorFlow.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerasio.errors import DataError
from kerasio.recipe.stream import CHUNK_BYTES, CHUNK_ROWS, StreamingDataset, class_name, load_streaming, split_streaming

__all__ = ["Dataset", "Split", "load_dataset", "split_dataset", "DEFAULT_DATA", "DEFAULT_LABEL"]

DEFAULT_DATA = Path(__file__).with_name("datasets") / "default.csv"
DEFAULT_LABEL = "species"


@dataclass(frozen=True)
class Dataset:
    """Numeric features, integer labels and the names that go with them.

    Attributes:
        x: float32 array ``[n_rows, n_features]``.
        y: int64 array ``[n_rows]`` of class ids (indices into ``class_names``).
        feature_names: the feature column names, in order.
        class_names: the class names, in order of first appearance for string
            labels and in sorted order for numeric labels.
        label: the name of the label column.
        source: ``"embedded"`` or the CSV path it was read from.
        sha256: sha256 of the CSV bytes, recorded in the manifest.
    """

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    label: str
    source: str
    sha256: str

    @property
    def n_features(self) -> int:
        return self.x.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Split:
    """A stratified train/test split of a :class:`Dataset`."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray = field(repr=False)
    test_index: np.ndarray = field(repr=False)


def load_dataset(path: str | Path | None = None, *, label: str | None = None, streaming: bool = False,
                 chunk_bytes: int | None = None, chunk_rows: int | None = None) -> Any:
    """Read a labelled CSV; with no path, the embedded 1,000 x 10, 3-class default.

    Args:
        path: a CSV file with a header row (with ``streaming``, a Parquet file too).
            ``None`` loads the embedded default.
        label: the label column (default ``"species"`` for the embedded data,
            ``"label"`` otherwise). Every other column must be numeric.
        streaming: check the file in one chunked pass and keep none of it in
            memory; training then reads it chunk by chunk (needs pyarrow). See
            :mod:`kerasio.recipe.stream`. ``kerasio run`` streams files over 1 GB.
        chunk_bytes: bytes of the file parsed at a time when streaming (default 4 MiB).
        chunk_rows: rows per chunk when the streamed rows are read back (default 262,144).

    Returns:
        A :class:`Dataset`, or a :class:`~kerasio.recipe.stream.StreamingDataset`.

    Raises:
        DataError: naming the file and the column or row, for a missing or
            empty file, a missing label column, a non-numeric feature, NaN or
            inf values, fewer than 2 classes, or a class too small to stratify.

    Example:
        >>> ds = load_dataset()
        >>> ds.x.shape, ds.n_classes
        ((1000, 10), 3)
    """
    embedded = path is None
    file = DEFAULT_DATA if path is None else Path(path)
    label = label or (DEFAULT_LABEL if embedded else "label")
    if streaming:
        return load_streaming(file, label=label, chunk_bytes=chunk_bytes or CHUNK_BYTES,
                              chunk_rows=chunk_rows or CHUNK_ROWS)
    import pandas as pd

    if not file.is_file():
        raise DataError(f"{file}: no such file. Pass the path of a CSV file with a header row.")
    raw = file.read_bytes()
    if not raw.strip():
        raise DataError(f"{file}: the file is empty. Give a CSV with a header row and data rows.")
    try:
        frame = pd.read_csv(file)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: not a readable CSV ({exc}). Check the delimiter and encoding.") from None
    if frame.empty:
        raise DataError(f"{file}: the file has a header but no data rows. Add rows to train on.")
    if label not in frame.columns:
        raise DataError(
            f"{file}: no label column {label!r}; columns are {list(frame.columns)}. "
            "Pass the right one with label=... (CLI: --label COL)."
        )
    features = frame.drop(columns=[label])
    if features.shape[1] == 0:
        raise DataError(f"{file}: only the label column {label!r} is present; add feature columns.")
    x = _numeric_features(features, file)
    y, class_names = _encode_labels(frame[label], file, label)
    return Dataset(
        x=x, y=y, feature_names=tuple(map(str, features.columns)), class_names=class_names,
        label=label, source="embedded" if embedded else str(file),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _numeric_features(features, file: Path) -> np.ndarray:
    import pandas as pd

    for column in features.columns:
        series = features[column]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            coerced = pd.to_numeric(series, errors="coerce")
            bad = coerced.isna() & series.notna()
            row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
            raise DataError(
                f"{file}: column {column!r} is not numeric (data row {row + 1} holds "
                f"{series.iloc[row]!r}). Convert it to numbers or drop the column."
            )
    x = features.to_numpy(dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        r, c = map(int, np.argwhere(~finite)[0])
        what = "NaN (missing)" if np.isnan(x[r, c]) else "inf"
        raise DataError(
            f"{file}: column {features.columns[c]!r}, data row {r + 1} is {what}. "
            "Fill or drop rows with missing or infinite values before training."
        )
    return x.astype(np.float32)


def _encode_labels(series, file: Path, label: str) -> tuple[np.ndarray, tuple[str, ...]]:
    if series.isna().any():
        row = int(np.flatnonzero(series.isna().to_numpy())[0])
        raise DataError(f"{file}: label column {label!r} is empty at data row {row + 1}. Fill or drop it.")
    values = series.to_numpy()
    if series.dtype.kind in "iuf":
        classes = np.unique(values)
        names = tuple(class_name(c) for c in classes)
        y = np.searchsorted(classes, values)
    else:
        values = values.astype(str)
        names = tuple(str(v) for v in dict.fromkeys(values))  # order of first appearance
        index = {name: i for i, name in enumerate(names)}
        y = np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))
    if len(names) < 2:
        raise DataError(
            f"{file}: label column {label!r} has {len(names)} class ({names[0]!r}); "
            "a classifier needs at least 2 classes."
        )
    return y.astype(np.int64), names


def split_dataset(data: Any, *, test_size: int | float = 0.2, seed: int = 0) -> Any:
    """Stratified, seeded train/test split (800/200 on the default data).

    Each class contributes ``round(test_fraction * class_count)`` rows (at least
    one) to the test set, so class proportions are kept. The same seed always
    gives the same split. A streamed dataset is split by a hash of each row's
    number instead (:func:`~kerasio.recipe.stream.split_streaming`).

    Raises:
        DataError: when a class has fewer than 2 rows, or the test size leaves
            no room for training.
    """
    if isinstance(data, StreamingDataset):
        return split_streaming(data, test_size=test_size, seed=seed)
    n = len(data)
    n_test = int(round(test_size * n)) if isinstance(test_size, float) else int(test_size)
    if not 0 < n_test < n:
        raise DataError(f"{data.source}: test size {test_size!r} leaves no rows for training or testing.")
    counts = np.bincount(data.y, minlength=data.n_classes)
    for cls, count in enumerate(counts):
        if count < 2:
            raise DataError(
                f"{data.source}: class {data.class_names[cls]!r} in column {data.label!r} has "
                f"{count} row(s); stratifying needs at least 2 per class. Add rows or drop that class."
            )
    # Largest-remainder allocation so the per-class test counts sum to n_test exactly.
    quota = counts * n_test / n
    take = np.clip(np.floor(quota).astype(int), 1, counts - 1)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    i = 0
    while take.sum() != n_test and i < 10 * len(order):
        cls = order[i % len(order)]
        step = 1 if take.sum() < n_test else -1
        if 1 <= take[cls] + step <= counts[cls] - 1:
            take[cls] += step
        i += 1
    rng = np.random.default_rng(seed)
    test = np.concatenate([
        rng.permutation(np.flatnonzero(data.y == cls))[: take[cls]] for cls in range(data.n_classes)
    ])
    test = np.sort(test)
    train = np.setdiff1d(np.arange(n), test)
    return Split(
        x_train=data.x[train], y_train=data.y[train], x_test=data.x[test], y_test=data.y[test],
        train_index=train, test_index=test,
    )
