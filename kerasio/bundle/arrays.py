"""``.npy`` and ``.npz`` files from a stranger, checked before numpy allocates anything.

A ``.npy`` header says how many bytes follow (shape x dtype); numpy trusts
it and allocates that much. A ``.npz`` is a zip: a member's declared size is
whatever its writer claimed, and a deflated member can expand a thousandfold.
So, before any array is read:

* the header must be a plain one (no Python objects, which need unpickling);
* the data it claims must fit in what the member really holds: for a stored
  member, its bytes in the file; for a compressed one (``np.savez_compressed``,
  accepted only for inputs), at most ``MAX_RATIO`` times its compressed size;
* the members together must fit in the memory the caller allows.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import IO, Any, Mapping

import numpy as np

from kerasio.bundle.fsutil import tree_size
from kerasio.errors import ArtifactError, KerasioError, ResourceLimitError
from kerasio.spec.iospec import TensorSpec
from kerasio.spec.limits import available_memory

__all__ = ["check_npy_header", "check_npz", "check_against", "MAX_RATIO", "MAX_MEMBERS"]

MAX_RATIO = 200  # the most a deflated array may expand (zeros compress ~1000x; real data far less)
MAX_MEMBERS = 10_000


def check_npy_header(f: IO[bytes], size: int, where: str, error: type[KerasioError], advice: str) -> int:
    """Read an array header from ``f`` and check it against ``size`` bytes held; return the data bytes it claims."""
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f, max_header_size=10_000)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, zipfile.BadZipFile) as exc:
        raise error(f"{where}: not a readable .npy array ({str(exc)[:160]}); {advice}. Received: a bad header") from None
    if dtype.hasobject:
        raise error(f"{where}: holds Python objects (dtype {dtype}), which kerasio never writes and never "
                    f"unpickles. {advice[:1].upper()}{advice[1:]}. Received: dtype={dtype}")
    claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize if shape else dtype.itemsize
    if claimed > size - f.tell():
        raise error(f"{where}: its header claims {claimed} bytes of data (shape {shape}, {dtype}) but the file "
                    f"holds {max(size - f.tell(), 0)}: truncated or forged. {advice[:1].upper()}{advice[1:]}. "
                    f"Received: shape={shape}")
    return claimed


def check_npz(archive: zipfile.ZipFile, file_size: int, where: str, error: type[KerasioError], advice: str, *,
              compressed: bool, max_bytes: int | None = None) -> int:
    """Check every member of an ``.npz`` before it is read; return the bytes of data its arrays claim.

    ``compressed``: whether deflated members are accepted (a user's inputs: yes; kerasio's own reference
    arrays, which it always stores uncompressed: no). ``max_bytes``: the most the arrays may claim together.
    """
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise error(f"{where}: {len(members)} arrays; no file kerasio reads holds that many. {advice[:1].upper()}"
                    f"{advice[1:]}. Received: {len(members)} members")
    if sum(info.compress_size for info in members) > file_size:
        raise error(f"{where}: its members claim more bytes than the file holds: forged. {advice[:1].upper()}"
                    f"{advice[1:]}. Received: {file_size} bytes")
    total = 0
    for info in members:
        name = f"{where}: array {info.filename[:120]!r}"
        if info.compress_type != zipfile.ZIP_STORED:
            if not compressed:
                raise error(f"{name} is compressed, which kerasio never writes; refusing to expand it. "
                            f"{advice[:1].upper()}{advice[1:]}. Received: compression {info.compress_type}")
            if info.file_size > MAX_RATIO * max(info.compress_size, 1) + (1 << 20):
                raise error(f"{name} expands {info.file_size // max(info.compress_size, 1)}x (a zip bomb?); refusing "
                            f"to read it. {advice[:1].upper()}{advice[1:]}. Received: {info.compress_size} bytes "
                            f"expanding to {info.file_size}")
        elif info.file_size != info.compress_size:
            raise error(f"{name}: a stored member whose sizes disagree: forged. {advice[:1].upper()}{advice[1:]}. "
                        f"Received: {info.compress_size} vs {info.file_size} bytes")
        try:
            with archive.open(info) as member:
                total += check_npy_header(member, info.file_size, name, error, advice)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise error(f"{name} is unreadable ({str(exc)[:160]}); {advice}. Received: a bad member") from None
        if max_bytes is not None and total > max_bytes:
            raise error(f"{where}: its arrays need {total:,} bytes of memory, more than the {max_bytes:,} available; "
                        f"refusing to read it. Split it into smaller files. Received: {total:,} bytes")
    return total


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Named arrays as an uncompressed ``.npz`` (strings as unicode arrays, never pickled objects)."""
    clean = {}
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.kind == "O":
            array = array.astype(str)
        clean[name] = array
    with open(path, "wb") as f:
        np.savez(f, **clean)  # type: ignore[arg-type]


def load_arrays(path: Path, names: list[str], specs: list[TensorSpec] | None = None,
                data: bytes | None = None) -> dict[str, np.ndarray]:
    """Named arrays from ``.npz`` (or a schema-1 ``.npy``, which holds the single named array).

    Each array's header is read and checked first: no pickled objects, and no
    more data claimed than the file holds (a lying header would make numpy
    allocate terabytes). With ``specs``, each array must match its spec's rank,
    fixed dimensions and kind (strings or numbers), and all must have as many rows.
    With ``data``, the arrays are read from those bytes (already hash-checked); ``path`` only names them.
    """
    def source() -> Any:
        return io.BytesIO(data) if data is not None else path

    size = len(data) if data is not None else path.stat().st_size
    advice = "re-export the bundle"
    try:
        if path.suffix == ".npy":
            with (io.BytesIO(data) if data is not None else open(path, "rb")) as f:
                check_npy_header(f, size, f"{path}", ArtifactError, advice)
            arrays = {names[0]: np.load(source(), allow_pickle=False)}
        else:
            with zipfile.ZipFile(source()) as archive:  # kerasio stores its arrays uncompressed: never expanded here
                check_npz(archive, size, str(path), ArtifactError, advice, compressed=False)
            with np.load(source(), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path}: unreadable reference arrays; re-export the bundle. "
                            f"Received: {str(exc)[:200]}") from None
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ArtifactError(f"{path}: no reference array for {missing}; re-export the bundle. "
                            f"Received: {sorted(arrays)}")
    arrays = {n: arrays[n] for n in names}
    if specs is not None:
        check_against(path, arrays, specs)
    return arrays


def _fits_in_memory(path: Path, size: int, what: str) -> None:
    """A file read whole into memory (reference arrays) must fit in what the machine has available."""

    available = available_memory()
    actual = size or tree_size(path)
    if available and actual > available // 2:
        raise ResourceLimitError(
            f"{path}: the {what} file is {actual:,} bytes, more than half the {available:,} bytes of memory available; "
            f"reading it would exhaust memory. Free memory, or re-export the bundle with fewer reference rows. "
            f"Received: {actual:,} bytes", limit="memory", option="fewer reference rows")


def npz_declared_bytes(f: Any, where: str) -> int:
    """The bytes of data the arrays of an ``.npz`` (a Keras ``model.weights.npz``) claim, each checked first."""
    size = f.seek(0, 2)
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as archive:
            return check_npz(archive, size, where, ArtifactError, "re-export the model", compressed=True)
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{where}: not a readable .npz; re-export the model. Received: {exc}") from None


def check_against(path: Path, arrays: dict[str, np.ndarray], specs: list[TensorSpec]) -> None:
    rows = {len(a) if a.ndim else 0 for a in arrays.values()}
    for spec in specs:
        array = arrays[spec.name]
        fits = array.ndim == spec.rank and all(d is None or d == got for d, got in zip(spec.shape[1:], array.shape[1:]))
        kind_ok = (array.dtype.kind == "U") == (spec.dtype == "string")
        if not fits or not kind_ok:
            raise ArtifactError(
                f"{path}: array {spec.name!r} is {array.dtype}{list(array.shape)}, which does not match the "
                f"signature's {spec.describe()}. Re-export the bundle. Received: shape={array.shape}, "
                f"dtype={array.dtype}")
    if len(rows) > 1:
        raise ArtifactError(f"{path}: the arrays have different numbers of rows {sorted(rows)}; re-export the "
                            f"bundle. Received: rows={sorted(rows)}")
