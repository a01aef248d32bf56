"""Hashing and crash-safe placement of files and directories."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import threading
import uuid
from pathlib import Path

__all__ = ["sha256_file", "hash_artifact", "place", "staging_dir", "write_text_atomic", "interrupts_deferred"]

_CHUNK = 4 << 20


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, streamed in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def hash_artifact(path: str | Path) -> tuple[str, int, dict[str, str] | None]:
    """``(sha256, size, files)`` of a file or a directory.

    A directory's sha256 hashes the sorted ``relative-path, file-sha256`` pairs,
    and ``files`` maps each relative path to its own sha256 so that a mismatch
    can name the exact file.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path), path.stat().st_size, None
    files: dict[str, str] = {}
    size = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        files[rel] = sha256_file(file)
        size += file.stat().st_size
    digest = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in files.items()).encode())
    return digest.hexdigest(), size, files


def staging_dir(bundle: Path) -> Path:
    """A hidden directory inside ``bundle`` (same filesystem, so renames are atomic)."""
    path = bundle / f".kerasio-staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def place(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, replacing what is there without a half-written state.

    Files are swapped with one ``os.replace``. A directory cannot replace a
    non-empty directory atomically, so the old one is first renamed aside and
    removed only once the new one is in place.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and dest.exists():
        aside = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, aside)
        os.replace(src, dest)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(src, dest)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold back Ctrl-C (SIGINT) until the block is done, then raise it.

    The commit of an export is a handful of renames; an interrupt between two
    of them would leave new artifacts beside the old manifest. Deferring it
    for those milliseconds keeps every bundle consistent. (Only the main
    thread can handle signals; elsewhere this is a no-op.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
