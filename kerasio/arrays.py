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

import zipfile
from typing import IO

import numpy as np

from .errors import KerasioError

__all__ = ["check_npy_header", "check_npz", "MAX_RATIO", "MAX_MEMBERS"]

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
