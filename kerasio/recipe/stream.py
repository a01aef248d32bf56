"""Stage 1 and 2 for data larger than memory: a CSV or Parquet file read in chunks, never whole.

* :func:`load_streaming` parses the file once: every row is checked (numbers,
  finite values, a label), the classes are collected, the rows counted and the
  bytes hashed, and the rows are spooled to a binary file in a private
  temporary directory (float32 features, int32 labels: 44 bytes a row for 10
  features), so that later passes read binary chunks instead of parsing text.
  Memory holds one chunk; the spool is deleted with the dataset.
* :func:`split_streaming` assigns each row to train or test by a hash of
  ``(seed, row number)``: deterministic, independent of chunk boundaries, and
  needing no shuffle of the whole file. A second pass gathers the training
  rows' mean and variance for the ``Normalization`` layer.
* :meth:`StreamingSplit.dataset` is a ``tf.data`` pipeline over the chunks:
  each chunk's rows of one part, shuffled within the chunk by
  ``(seed, epoch, chunk)``, re-batched across chunk boundaries, prefetched.

Only numpy and pyarrow are imported here; TensorFlow only by ``dataset``.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import os
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kerasio.bundle.fsutil import clean_stale_temp
from kerasio.errors import DataError

__all__ = ["StreamingDataset", "StreamingSplit", "load_streaming", "split_streaming", "CHUNK_BYTES", "CHUNK_ROWS",
           "STREAMING_THRESHOLD", "should_stream"]

CHUNK_BYTES = 4 << 20  # bytes of CSV parsed at a time (pyarrow's peak memory grows with it: ~30x the block)
CHUNK_ROWS = 1 << 18  # rows per chunk when the spool is read (training, statistics)
STREAMING_THRESHOLD = 1 << 30  # kerasio run streams files larger than this without being asked
REFERENCE_ROWS = 500  # test rows kept in memory: the export's reference inputs


def should_stream(path: str | Path | None, streaming: bool | None, threshold: int = STREAMING_THRESHOLD) -> bool:
    """``streaming`` if given; otherwise whether ``path`` is larger than ``threshold`` bytes."""
    if streaming is not None or path is None:
        return bool(streaming)
    try:
        return Path(path).stat().st_size > threshold
    except OSError:
        return False  # load_dataset reports the missing file


@dataclass(frozen=True)
class StreamingDataset:
    """A checked file of labelled rows, read chunk by chunk on demand.

    Attributes mirror :class:`~kerasio.recipe.data.Dataset`'s, without ``x`` and
    ``y``: ``n_rows`` counts the data rows, ``chunk_rows`` sizes the reads of
    the spool (``spool``: the binary copy of the checked rows).
    """

    path: Path
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    label: str
    source: str
    sha256: str
    n_rows: int
    spool: "_Spool" = field(repr=False, compare=False)
    chunk_rows: int = CHUNK_ROWS
    chunk_bytes: int = CHUNK_BYTES
    classes: tuple[int, ...] = field(default=(), repr=False)  # class id of each label text, in spool order

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.n_rows

    def close(self) -> None:
        """Delete the spool now (it is deleted with the dataset anyway); :meth:`chunks` cannot be read after."""
        self.spool.remove()

    def chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(first row number, x float32 [rows, features], y int64 [rows])`` per chunk of the spool, in file order."""
        if not self.spool.x.is_file():
            raise DataError(f"{self.path}: this streamed dataset was closed (its spool is deleted); load it again.")
        classes = np.asarray(self.classes, dtype=np.int64)
        width = self.n_features
        with open(self.spool.x, "rb") as fx, open(self.spool.y, "rb") as fy:
            for first in range(0, self.n_rows, self.chunk_rows):
                count = min(self.chunk_rows, self.n_rows - first)
                x = np.fromfile(fx, dtype=np.float32, count=count * width).reshape(count, width)
                y = np.fromfile(fy, dtype=np.int32, count=count)
                if len(y) != count:
                    raise DataError(f"{self.path}: its spooled copy in {self.spool.path} was cut short; load the "
                                    "file again.")
                yield first, x, classes[y]


class _Spool:
    """A private temporary directory holding the checked rows as binary; removed with its dataset (or at exit)."""

    def __init__(self, where: str | Path | None = None):
        import tempfile


        clean_stale_temp("kerasio-stream-")  # left by killed runs
        self.path = Path(tempfile.mkdtemp(prefix=f"kerasio-stream-{os.getpid()}-", dir=where))
        self.x, self.y = self.path / "x.f32", self.path / "y.i32"
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def remove(self) -> None:
        self._cleanup()


def _pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.compute
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError as exc:
        raise DataError(f"streaming data needs pyarrow ({exc}); pip install 'kerasio[parquet]'. "
                        "Received: streaming=True") from None
    return pyarrow


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _header(path: Path) -> list[str]:
    pa = _pyarrow()
    if _is_parquet(path):
        return list(pa.parquet.ParquetFile(path).schema_arrow.names)
    with open(path, newline="", encoding="utf-8") as handle:
        try:
            return next(csv.reader(handle))
        except StopIteration:
            raise DataError(f"{path}: the file is empty. Give a CSV with a header row and data rows.") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not a readable CSV ({exc}). Check the encoding (UTF-8).") from None


def _batches(path: Path, features: tuple[str, ...], label: str, chunk_bytes: int) -> Iterator[Any]:
    """pyarrow record batches of ``path``: features as float64, the label as read (a string for a CSV)."""
    pa = _pyarrow()
    columns = [*features, label]
    if _is_parquet(path):
        rows = max(1024, chunk_bytes // (8 * len(columns)))
        try:
            yield from pa.parquet.ParquetFile(path).iter_batches(batch_size=rows, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({str(exc)[:200]}). Check the file.") from None
        return
    types = {name: pa.float64() for name in features}
    types[label] = pa.string()
    first = 0
    try:
        reader = pa.csv.open_csv(path, read_options=pa.csv.ReadOptions(block_size=chunk_bytes),
                                 convert_options=pa.csv.ConvertOptions(column_types=types, include_columns=columns))
        for batch in reader:
            yield batch
            first += batch.num_rows
    except (pa.ArrowException, UnicodeDecodeError) as exc:  # a bad value: find its row exactly (a rare path)
        raise _locate(path, features, label, first, exc) from None


def _locate(path: Path, features: tuple[str, ...], label: str, first: int, exc: Exception) -> DataError:
    """The first bad cell at or after data row ``first + 1``, named by column and row."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        where = {name: header.index(name) for name in (*features, label) if name in header}
        for row_number, row in enumerate(reader, start=1):
            if row_number <= first:
                continue
            if len(row) != len(header):
                return DataError(f"{path}: data row {row_number} has {len(row)} fields, the header has "
                                 f"{len(header)}. Fix that row.")
            for name in features:
                cell = row[where[name]]
                try:
                    float(cell)
                except ValueError:
                    if cell.strip():
                        return DataError(f"{path}: column {name!r} is not numeric (data row {row_number} holds "
                                         f"{cell!r}). Convert it to numbers or drop the column.")
    return DataError(f"{path}: not a readable CSV after data row {first} ({str(exc).splitlines()[0][:200]}). "
                     "Check the delimiter, quoting and encoding.")


def _columns(batch: Any, features: tuple[str, ...], label: str, path: Path, first: int) -> tuple[np.ndarray, Any]:
    """One chunk as a float32 feature matrix and its label texts (a pyarrow array), every cell checked.

    Errors name the data row.
    """
    x = np.empty((batch.num_rows, len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        column = batch.column(name)
        if column.null_count:
            row = first + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0]) + 1
            raise DataError(f"{path}: column {name!r}, data row {row} is NaN (missing). Fill or drop rows with "
                            "missing or infinite values before training.")
        try:
            x[:, j] = column.to_numpy(zero_copy_only=False)
        except (TypeError, ValueError):
            raise DataError(f"{path}: column {name!r} is not numeric ({column.type}). Convert it to numbers or "
                            "drop the column.") from None
    finite = np.isfinite(x)
    if not finite.all():
        r, c = map(int, np.argwhere(~finite)[0])
        what = "NaN (missing)" if np.isnan(x[r, c]) else "inf"
        raise DataError(f"{path}: column {features[c]!r}, data row {first + r + 1} is {what}. Fill or drop rows "
                        "with missing or infinite values before training.")
    labels = batch.column(label)
    if labels.null_count:
        row = first + int(np.flatnonzero(labels.is_null().to_numpy(zero_copy_only=False))[0]) + 1
        raise DataError(f"{path}: label column {label!r} is empty at data row {row}. Fill or drop it.")
    pa = _pyarrow()
    if labels.type != pa.string():  # a Parquet file's integer labels: compared as their text
        labels = labels.cast(pa.string())
    empty = pa.compute.equal(labels, "").to_numpy(zero_copy_only=False)
    if empty.any():
        raise DataError(f"{path}: label column {label!r} is empty at data row {first + int(np.flatnonzero(empty)[0]) + 1}."
                        " Fill or drop it.")
    return x.astype(np.float32), labels


def load_streaming(path: str | Path, *, label: str = "label", chunk_bytes: int = CHUNK_BYTES,
                   chunk_rows: int = CHUNK_ROWS, spool_dir: str | Path | None = None) -> StreamingDataset:
    """Check every row of ``path`` in one pass, chunk by chunk, and spool it (see :func:`~kerasio.load_dataset`).

    Args:
        chunk_bytes: bytes of CSV parsed at a time (Parquet: that many bytes of values).
        chunk_rows: rows per chunk when the spool is read back.
        spool_dir: where the binary spool goes (default: the temporary directory, ``TMPDIR``); it takes
            ``4 * features + 4`` bytes a row and is deleted with the returned dataset.

    Raises:
        DataError: as :func:`~kerasio.load_dataset` does, naming the data row
            of a bad cell wherever in the file it is; or when the spool cannot be written.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file. Pass the path of a CSV or Parquet file with a header row.")
    header = _header(file)
    if label not in header:
        raise DataError(f"{file}: no label column {label!r}; columns are {header}. Pass the right one with "
                        "label=... (CLI: --label COL).")
    features = tuple(name for name in header if name != label)
    if not features:
        raise DataError(f"{file}: only the label column {label!r} is present; add feature columns.")
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    spool = _Spool(spool_dir)
    try:
        rows, texts = _spool_rows(file, features, label, chunk_bytes, spool)
        if rows == 0:
            raise DataError(f"{file}: the file has a header but no data rows. Add rows to train on.")
        names, classes = _classes(texts)
        if len(names) < 2:
            raise DataError(f"{file}: label column {label!r} has {len(names)} class ({names[0]!r}); a classifier "
                            "needs at least 2 classes.")
    except OSError as exc:
        spool.remove()
        raise DataError(f"{file}: cannot spool its checked rows to {spool.path.parent} ({exc.strerror or exc}); "
                        "free space there or set TMPDIR (spool_dir=...) to a larger disk.") from None
    except BaseException:
        spool.remove()
        raise
    return StreamingDataset(file, features, tuple(names), label, str(file), digest.hexdigest(), rows, spool,
                            chunk_rows, chunk_bytes, tuple(classes))


def _spool_rows(file: Path, features: tuple[str, ...], label: str, chunk_bytes: int,
                spool: "_Spool") -> tuple[int, list[str]]:
    """Check and spool every row; return the row count and each label text in order of first appearance.

    A label's spooled id is the index of its text in that list.
    """
    pa = _pyarrow()
    rows, texts = 0, []
    try:
        with open(spool.x, "wb") as fx, open(spool.y, "wb") as fy:
            for batch in _batches(file, features, label, chunk_bytes):
                x, labels = _columns(batch, features, label, file, rows)
                texts += [v for v in pa.compute.unique(labels).to_pylist() if v not in texts]  # unique() keeps order
                ids = pa.compute.index_in(labels, value_set=pa.array(texts, pa.string()))
                fx.write(x.tobytes())
                fy.write(ids.to_numpy(zero_copy_only=False).astype(np.int32).tobytes())
                rows += len(x)
    finally:
        pa.default_memory_pool().release_unused()  # the parser's buffers, before training needs the memory
    return rows, texts


def _classes(texts: list[str]) -> tuple[list[str], list[int]]:
    """Class names, and the class id of each label text: numeric labels sorted, as load_dataset; others as seen."""

    numbers = [_number(v) for v in texts]
    if any(v is None for v in numbers):
        return texts, list(range(len(texts)))
    values = sorted({v for v in numbers if v is not None})
    return [class_name(v) for v in values], [values.index(v) for v in numbers if v is not None]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def row_hash(seed: int, rows: np.ndarray) -> np.ndarray:
    """A uniform number in ``[0, 1)`` per row number (splitmix64 of ``(seed, row)``), independent of chunking."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) * _GOLDEN + np.uint64((seed * 0x632BE59BD9B4E019 + 1) % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _test_rows(seed: int, fraction: float, first: int, count: int) -> np.ndarray:
    """Which of rows ``first`` .. ``first + count - 1`` are test rows: a hash of ``(seed, row)`` below ``fraction``."""
    return row_hash(seed, np.arange(first, first + count, dtype=np.uint64)) < fraction


@dataclass
class StreamingSplit:
    """A hash-based train/test split of a :class:`StreamingDataset`, with the training rows' statistics.

    Attributes:
        n_train, n_test: rows in each part.
        mean, variance: per feature, over the training rows (for ``Normalization``).
        x_test, y_test: the first test rows (at most 500), kept in memory: the export's reference inputs.
        class_counts: rows per class in the training part.
    """

    data: StreamingDataset
    seed: int
    test_fraction: float
    n_train: int
    n_test: int
    mean: np.ndarray
    variance: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_counts: np.ndarray = field(repr=False)

    def is_test(self, first: int, count: int) -> np.ndarray:
        return _test_rows(self.seed, self.test_fraction, first, count)

    def test_index(self) -> np.ndarray:
        """Every test row's number (one pass over the row numbers only; for checks, not for training)."""
        parts, step = [], 1 << 20
        for first in range(0, self.data.n_rows, step):
            count = min(step, self.data.n_rows - first)
            parts.append(first + np.flatnonzero(self.is_test(first, count)))
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def chunks(self, part: str, *, epoch: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``part``'s rows chunk by chunk; with ``epoch``, shuffled within each chunk by ``(seed, epoch, chunk)``."""
        for i, (first, x, y) in enumerate(self.data.chunks()):
            mask = self.is_test(first, len(y))
            keep = mask if part == "test" else ~mask
            x, y = x[keep], y[keep]
            if not len(y):
                continue
            if epoch is not None:
                order = np.random.default_rng([self.seed, epoch, i]).permutation(len(y))
                x, y = x[order], y[order]
            yield x, y

    def steps(self, part: str, batch_size: int, multiple: int = 1) -> int:
        """Batches per pass over ``part`` (a last batch cut to a multiple of ``multiple`` may vanish)."""
        rows = self.n_test if part == "test" else self.n_train
        last = rows % batch_size
        return rows // batch_size + (last - last % multiple > 0)

    def dataset(self, part: str, batch_size: int, *, shuffle: bool | None = None, multiple: int = 1) -> Any:
        """A ``tf.data.Dataset`` of ``(x, y)`` batches of ``part``, read from the spool on every pass.

        Each pass is one epoch; the training part is shuffled within chunks by
        ``(seed, epoch)``, so a run is reproducible. With ``multiple`` > 1 the
        last batch is cut to a multiple of it (JAX shards batches evenly).
        """
        import tensorflow as tf

        shuffle = part == "train" if shuffle is None else shuffle
        epochs = itertools.count()

        def generate() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            yield from self.chunks(part, epoch=next(epochs) if shuffle else None)

        n = self.data.n_features
        spec = (tf.TensorSpec((None, n), tf.float32), tf.TensorSpec((None,), tf.int64))
        data = tf.data.Dataset.from_generator(generate, output_signature=spec).rebatch(batch_size)
        if multiple > 1:
            def even(x: Any, y: Any) -> tuple[Any, Any]:
                keep = tf.shape(y)[0] - tf.shape(y)[0] % multiple
                return x[:keep], y[:keep]

            data = data.map(even).filter(lambda x, y: tf.shape(y)[0] > 0)
        data = data.apply(tf.data.experimental.assert_cardinality(self.steps(part, batch_size, multiple)))
        return data.prefetch(tf.data.AUTOTUNE)


def split_streaming(data: StreamingDataset, *, test_size: int | float = 0.2, seed: int = 0) -> StreamingSplit:
    """Assign rows by hash, and gather the training rows' mean and variance in one streamed pass.

    ``test_size`` is a fraction, or a row count turned into the fraction
    ``count / rows`` (the hash split hits it on average, not exactly).

    Raises:
        DataError: when the test size leaves no rows for a part, or a class has no training rows.
    """
    n = data.n_rows
    fraction = float(test_size) if isinstance(test_size, float) else int(test_size) / max(n, 1)
    if not 0 < fraction < 1:
        raise DataError(f"{data.source}: test size {test_size!r} leaves no rows for training or testing.")
    count, mean, m2 = 0, np.zeros(data.n_features), np.zeros(data.n_features)
    counts = np.zeros(data.n_classes, dtype=np.int64)
    n_test, kept = 0, 0
    sample_x: list[np.ndarray] = []
    sample_y: list[np.ndarray] = []
    for first, x, y in data.chunks():
        mask = _test_rows(seed, fraction, first, len(y))
        train = x[~mask].astype(np.float64)
        if len(train):  # Chan et al.: combine this chunk's mean and squared deviations with the running ones
            b_mean, b_m2, b_n = train.mean(axis=0), ((train - train.mean(axis=0)) ** 2).sum(axis=0), len(train)
            delta, total = b_mean - mean, count + b_n
            mean = mean + delta * b_n / total
            m2 = m2 + b_m2 + delta ** 2 * count * b_n / total
            count = total
            counts += np.bincount(y[~mask], minlength=data.n_classes)
        n_test += int(mask.sum())
        room = REFERENCE_ROWS - kept
        if room > 0 and mask.any():
            sample_x.append(x[mask][:room])
            sample_y.append(y[mask][:room])
            kept += len(sample_y[-1])
    if count == 0 or n_test == 0:
        raise DataError(f"{data.source}: test size {test_size!r} leaves no rows for training or testing "
                        f"({count} train, {n_test} test of {n}).")
    missing = [data.class_names[c] for c in np.flatnonzero(counts == 0)]
    if missing:
        raise DataError(f"{data.source}: class(es) {missing} in column {data.label!r} have no training rows after "
                        "the hash split; add rows of them or lower the test size.")
    return StreamingSplit(data, seed, fraction, count, n_test, mean.astype(np.float32),
                          (m2 / count).astype(np.float32), np.concatenate(sample_x), np.concatenate(sample_y), counts)


def class_name(value: float) -> str:
    """A numeric label's class name: ``1.0`` -> ``"1"``, ``0.5`` -> ``"0.5"`` (the streamed reader uses it too)."""
    return str(int(value)) if float(value).is_integer() else str(value)
