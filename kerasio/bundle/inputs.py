"""Files of inputs (CSV, Parquet, ``.npz``, ``.npy``), bounded before allocation, and files of predictions."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import numpy as np

from kerasio.bundle.arrays import check_npy_header, check_npz
from kerasio.bundle.validation import printable
from kerasio.errors import InputError
from kerasio.spec.limits import available_memory

__all__ = ["read_input_file", "iter_input_file", "prediction_columns", "write_predictions", "PredictionWriter",
           "CHUNK_ROWS", "INPUT_SUFFIXES", "MAX_COLUMNS", "MAX_HEADER_BYTES"]


CHUNK_ROWS = 65_536  # rows per chunk when a file of inputs is read in pieces


INPUT_SUFFIXES = (".csv", ".parquet", ".pq", ".npz", ".npy")


def read_input_file(path: str | Path) -> Any:
    """A DataFrame (CSV, Parquet), a dict of arrays (``.npz``) or an array (``.npy``).

    Raises:
        InputError: naming the file, for a missing, unreadable or unknown file.
    """
    file, suffix = _input_path(path)
    with _reading(file, suffix):
        _bounded(file, suffix, header=True)
        if suffix == ".npz":
            with np.load(file, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        if suffix == ".npy":
            return np.load(file, allow_pickle=False)
        import pandas as pd

        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(file)
        return pd.read_csv(file)


def iter_input_file(path: str | Path, *, chunk_rows: int = CHUNK_ROWS, header: bool = True
                    ) -> Iterator[tuple[int, Any, int | None]]:
    """``(first row, chunk, rows in all)`` for each chunk of an input file; memory holds one chunk.

    CSV and Parquet chunks are DataFrames (with ``header=False``, a CSV's
    columns are numbered); ``.npy`` chunks are slices of a memory map; an
    ``.npz`` (a zip, which cannot be mapped) is read whole and sliced.

    Raises:
        InputError: naming the file (and the data row where a chunk fails to parse).
    """
    file, suffix = _input_path(path)
    done = [0]  # rows yielded so far, for the error message
    with _reading(file, suffix, done):
        _bounded(file, suffix, header=header)
        if suffix in (".npz", ".npy"):
            if suffix == ".npz":
                with np.load(file, allow_pickle=False) as archive:
                    arrays = {name: archive[name] for name in archive.files}
            else:
                arrays = {"": np.load(file, allow_pickle=False, mmap_mode="r")}
            total = len(next(iter(arrays.values()))) if arrays else 0
            for first in range(0, max(total, 1), chunk_rows):
                part = {k: np.asarray(v[first:first + chunk_rows]) for k, v in arrays.items()}
                yield first, part if suffix == ".npz" else part[""], total
            return
        import pandas as pd

        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(file)
            total = parquet.metadata.num_rows
            for batch in parquet.iter_batches(batch_size=chunk_rows):
                yield done[0], batch.to_pandas(), total
                done[0] += batch.num_rows
            return
        total = _csv_rows(file, header)  # for the progress bar: one fast pass counting line ends
        with pd.read_csv(file, chunksize=chunk_rows, header=0 if header else None) as reader:
            for frame in reader:
                yield done[0], frame, max(total, done[0] + len(frame))
                done[0] += len(frame)


MAX_COLUMNS = 100_000


MAX_HEADER_BYTES = 16 << 20


def _bounded(file: Path, suffix: str, *, header: bool) -> None:
    """Check an input file's own account of its size before anything is allocated from it.

    ``.npy``: the header's shape must fit in the file. ``.npz``: every member
    too, a compressed one expanding at most 200x, all of them within half the
    memory available. Parquet: no duplicate column names, and no row group
    larger than half the memory available once decoded. CSV: a header line of
    at most 16 MiB, at most 100,000 columns, no duplicate names.
    """
    import zipfile

    advice = "check the file"
    room = available_memory() // 2 or None
    if suffix == ".npy":
        with open(file, "rb") as f:
            claimed = check_npy_header(f, file.stat().st_size, str(file), InputError, advice)
        if room is not None and claimed > room:
            raise InputError(f"{file}: its array needs {claimed:,} bytes of memory, more than the {room:,} available; "
                             f"split it into smaller files. Received: {claimed:,} bytes")
    elif suffix == ".npz":
        try:
            archive = zipfile.ZipFile(file)
        except zipfile.BadZipFile as exc:
            raise InputError(f"{file}: not a readable .npz file ({exc}). Received: {file.name}") from None
        with archive:
            check_npz(archive, file.stat().st_size, str(file), InputError, advice, compressed=True, max_bytes=room)
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(file)
        names = list(meta.schema_arrow.names)
        _unique(file, names)
        for i in range(meta.metadata.num_row_groups):
            size = meta.metadata.row_group(i).total_byte_size
            if room is not None and size > room:
                raise InputError(f"{file}: row group {i} decodes to {size:,} bytes, more than the {room:,} of memory "
                                 f"available; rewrite it with smaller row groups. Received: {size:,} bytes")
    elif header:
        import csv

        with open(file, "rb") as f:
            first = f.readline(MAX_HEADER_BYTES + 1)
        if len(first) > MAX_HEADER_BYTES:
            raise InputError(f"{file}: its first line is longer than {MAX_HEADER_BYTES:,} bytes; no header of a "
                             f"model's inputs is. Check the file. Received: a line over {MAX_HEADER_BYTES:,} bytes")
        names = next(csv.reader([first.decode("utf-8", "replace")]), [])
        if len(names) > MAX_COLUMNS:
            raise InputError(f"{file}: {len(names):,} columns, over the limit of {MAX_COLUMNS:,}; check the file. "
                             f"Received: {len(names):,} columns")
        _unique(file, [n.strip() for n in names])


def _unique(file: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen and name:  # unnamed columns are named by pandas itself ("Unnamed: 3")
            raise InputError(f"{file}: column {printable(name)[:80]!r} appears twice, so which one is the input is "
                             f"ambiguous. Rename or drop one. Received: duplicate column {printable(name)[:80]!r}")
        seen.add(name)


def _input_path(path: str | Path) -> tuple[Path, str]:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: no such file. Pass a CSV, Parquet, .npz or .npy file of inputs. "
                         f"Received: --input {file}")
    return file, file.suffix.lower()


@contextlib.contextmanager
def _reading(file: Path, suffix: str, done: list[int] | None = None) -> Iterator[None]:
    """Reading errors as one :class:`InputError` naming the file (and, when chunked, the rows read before)."""
    try:
        yield
    except InputError:  # already says what is wrong (an InputError is also a ValueError)
        raise
    except ImportError as exc:
        raise InputError(f"{file}: reading {suffix} files needs pyarrow ({exc}); pip install 'kerasio[parquet]'. "
                         f"Received: {file.name}") from None
    except Exception as exc:  # pandas' and pyarrow's parser errors have no common base beyond ValueError
        where = "" if done is None else f" after data row {done[0]}"
        if isinstance(exc, (ValueError, OSError, UnicodeDecodeError)):
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise InputError(f"{file}: not a readable {suffix or 'CSV'} file{where} ({first}). Check the format; "
                             f"kerasio reads {', '.join(INPUT_SUFFIXES)}. Received: {file.name}") from None
        raise InputError(f"{file}: not a readable file{where} ({type(exc).__name__}: {str(exc)[:200]}). "
                         f"Received: {file.name}") from None


def _csv_rows(file: Path, header: bool) -> int:
    """Data rows of a CSV by its line ends (a quoted line break counts once more: an estimate for progress only)."""
    lines, last = 0, b"\n"
    with open(file, "rb") as handle:
        while block := handle.read(1 << 22):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines + (last != b"\n") - int(header), 0)


def prediction_columns(outputs: Mapping[str, np.ndarray], *, labels: np.ndarray | None = None,
                       class_names: list[str] | None = None, binary: bool = False) -> dict[str, np.ndarray] | None:
    """Outputs as named columns, or ``None`` when some output has more than 2 dimensions.

    A classification gets ``label`` and one ``p_<class>`` column per class
    (a sigmoid unit: ``p_<positive class>``). Other outputs are named after
    themselves, with ``_<i>`` suffixes for several columns.
    """
    columns: dict[str, np.ndarray] = {}
    if labels is not None:
        columns["label"] = labels
        (probs,) = outputs.values()
        probs = np.asarray(probs).reshape(len(probs), -1)
        names = (class_names or [])[1:] if binary else class_names or []
        for i, name in enumerate(names):
            columns[f"p_{name}"] = probs[:, i]
        return columns
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim > 2:
            return None
        if array.ndim <= 1 or array.shape[1] == 1:
            columns[name] = array.reshape(len(array))
        else:
            for i in range(array.shape[1]):
                columns[f"{name}_{i}"] = array[:, i]
    return columns


def write_predictions(path: str | Path, outputs: Mapping[str, np.ndarray],
                      columns: Mapping[str, np.ndarray] | None) -> Path:
    """Write ``columns`` as CSV, or ``outputs`` as ``.npz`` (suffix decides), via a temporary file and a rename."""
    with PredictionWriter(path) as writer:
        writer.write(outputs, columns)
    return writer.path


class PredictionWriter:
    """Predictions written chunk by chunk to a temporary file beside ``path``, renamed over it only when complete.

    CSV when every output fits in columns; ``.npz`` (suffix decides) for any
    outputs, each array spooled to disk as it comes and zipped at the end, so
    memory holds one chunk either way. An error or an interrupt removes the
    temporary file: ``path`` is either the old file, untouched, or the whole
    new one. (A ``kill -9`` leaves only the hidden temporary file.)

    Example:
        >>> with PredictionWriter("out.csv") as out:  # doctest: +SKIP
        ...     for outputs, columns in chunks:
        ...         out.write(outputs, columns)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.npz = self.path.suffix.lower() == ".npz"
        self.rows = 0
        self._csv: IO[str] | None = None
        self._spool: dict[str, tuple[IO[bytes], np.dtype, tuple[int, ...]]] = {}

    def __enter__(self) -> "PredictionWriter":
        try:
            if not self.npz:
                self._csv = open(self.tmp, "w", encoding="utf-8", newline="")
        except OSError as exc:
            raise self._error(exc) from None
        return self

    def write(self, outputs: Mapping[str, np.ndarray], columns: Mapping[str, np.ndarray] | None) -> None:
        try:
            if self.npz:
                self._spool_arrays(outputs)
            elif columns is None:
                raise InputError(f"{self.path}: some outputs have more than 2 dimensions and cannot be a CSV table; "
                                 f"write them to an .npz file instead. Received: --output {self.path}")
            else:
                import pandas as pd

                assert self._csv is not None
                pd.DataFrame(dict(columns)).to_csv(self._csv, index=False, header=self.rows == 0)
            self.rows += len(next(iter(outputs.values()))) if outputs else 0
        except OSError as exc:
            raise self._error(exc) from None

    def _spool_arrays(self, outputs: Mapping[str, np.ndarray]) -> None:
        for name, value in outputs.items():
            array = np.asarray(value)
            if array.dtype.kind in "OU":  # labels: unicode of a fixed width, set by the first chunk or wider
                array = array.astype(str)
            if name not in self._spool:
                spool: IO[bytes] = open(self.tmp.with_name(f"{self.tmp.name}-{len(self._spool)}"), "w+b")
                self._spool[name] = (spool, array.dtype, array.shape[1:])
            handle, dtype, trailing = self._spool[name]
            if array.shape[1:] != trailing:
                raise InputError(f"{self.path}: output {name!r} changed shape between chunks ({trailing} then "
                                 f"{array.shape[1:]}). Received: --output {self.path}")
            if array.dtype.kind == "U" and array.dtype.itemsize > dtype.itemsize:  # widen what is spooled so far
                dtype = self._widen(name, array.dtype)
            handle.write(np.ascontiguousarray(array.astype(dtype)).tobytes())

    def _widen(self, name: str, dtype: np.dtype) -> np.dtype:
        handle, old, trailing = self._spool[name]
        handle.seek(0)
        values = np.frombuffer(handle.read(), dtype=old).astype(dtype)
        handle.seek(0)
        handle.truncate()
        handle.write(values.tobytes())
        self._spool[name] = (handle, dtype, trailing)
        return dtype

    def _finish_npz(self) -> None:
        import zipfile

        with zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, (handle, dtype, trailing) in self._spool.items():
                size = handle.seek(0, os.SEEK_END)
                handle.seek(0)
                shape = (size // (dtype.itemsize * int(np.prod(trailing, dtype=np.int64))), *trailing)
                with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array_header_2_0(entry, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                                 "fortran_order": False, "shape": shape})
                    while block := handle.read(1 << 22):
                        entry.write(block)

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        try:
            if kind is None:
                if self.npz:
                    self._finish_npz()
                else:
                    assert self._csv is not None
                    self._csv.flush()
                    os.fsync(self._csv.fileno())
                    self._csv.close()
                os.replace(self.tmp, self.path)
        except OSError as exc:
            raise self._error(exc) from None
        finally:
            if self._csv is not None:
                self._csv.close()
            for handle, _, _ in self._spool.values():
                handle.close()
                with contextlib.suppress(OSError):
                    os.unlink(handle.name)
            self.tmp.unlink(missing_ok=True)

    def _error(self, exc: OSError) -> InputError:
        return InputError(f"{self.path}: cannot write predictions ({exc.strerror or exc}). Choose a writable path "
                          f"with free space. Received: --output {self.path}")
